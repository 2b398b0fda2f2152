"""The command line's shared habits through the real `leukolab` command: --version, -q, --json tables, status (a dry
run that reads the real cache), one-line errors with exit status 2, help on every argument, --host everywhere,
$LEUKOLAB_MODEL_URI for every --model-uri, and the ETL keys 00_etl's parameters cell exposes."""

from __future__ import annotations

import argparse
import json
import tomllib

import pytest
from conftest import ROOT, leukolab

from leukolab.cli_parser import build_parser
from leukolab.cli_reference import cli_reference_markdown
from leukolab.data.etl.params import EtlParams
from leukolab.pipeline.parameters import notebook_parameters
from leukolab.workbench import demo_command


def all_parsers(parser: argparse.ArgumentParser, name: str = "leukolab"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from all_parsers(sub, f"{name} {sub_name}")


def test_every_argument_of_every_command_has_help_text():
    missing = [f"{name}: {action.option_strings or action.dest}" for name, parser in all_parsers(build_parser())
               for action in parser._actions if not action.help]
    assert not missing, missing


def test_the_cli_reference_has_every_command_and_the_exit_codes():
    reference = cli_reference_markdown()
    commands = [name for name, _ in all_parsers(build_parser())][1:]
    assert all(f"## `{name}`" in reference for name in commands), [n for n in commands if f"`{n}`" not in reference]
    assert "## Exit codes" in reference and "| 2 |" in reference and "--ip" not in reference, "a hidden alias shows"


def test_version_matches_pyproject(tmp_path):
    result = leukolab(tmp_path, "--version", timeout=120)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert result.returncode == 0 and result.stdout.strip().startswith(f"leukolab {version}"), result.stdout


@pytest.mark.parametrize("args, says", [
    (["sweep", "--experiment", "simple-cnn", "--trials", "2", "--param", "epochs"], "--param: expected KEY=VALUE"),
    (["run", "--param", "=3"], "--param: expected KEY=VALUE"),
    (["run", "--jobs", "0"], "--jobs: must be at least 1, got 0"),
    (["sweep", "--experiment", "simple-cnn", "--trials", "2", "--jobs", "0"], "--jobs: must be at least 1, got 0"),
    (["cluster", "up", "--workers", "two"], "--workers: expected a whole number"),
    (["compare", "only-one"], "required: RUN_B"),
    (["runs", "show", "no-such-run"], "no pipeline run 'no-such-run'"),
])
def test_a_malformed_argument_is_one_line_and_exit_status_2(tmp_path, args, says):
    result = leukolab(tmp_path, *args, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and says in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_host_is_the_one_spelling_and_model_uri_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("LEUKOLAB_MODEL_URI", "models:/other@challenger")
    parser = build_parser()
    for command in ("serve", "lab", "mlflow-ui", "demo"):
        assert parser.parse_args([command, "--host", "0.0.0.0"]).host == "0.0.0.0"
    assert parser.parse_args(["lab", "--ip", "10.0.0.1"]).host == "10.0.0.1", "the old spelling still works"
    assert parser.parse_args(["predict", "x.jpg"]).model_uri == "models:/other@challenger"
    assert parser.parse_args(["demo"]).model_uri == "models:/other@challenger"
    command, env = demo_command("127.0.0.1", 9999, "models:/leukolab/3", open_browser=False)
    assert "--port=9999" in command and "--no-browser" in command and env["LEUKOLAB_MODEL_URI"] == "models:/leukolab/3"


def test_every_etl_key_can_be_given_to_00_etl():
    declared = notebook_parameters(ROOT / "notebooks" / "00_etl.ipynb")
    assert not set(EtlParams.model_fields) - set(declared), sorted(set(EtlParams.model_fields) - set(declared))


@pytest.mark.integration
def test_status_reads_the_cache_and_runs_nothing(smoke_run):
    workspace, _ = smoke_run
    before = sorted(p.name for p in (workspace / "runs").iterdir())
    quiet = leukolab(workspace, "-q", "status", "--profile", "smoke", "--json", timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert " INFO " not in quiet.stderr, "-q leaves warnings and errors only"
    rows = json.loads(quiet.stdout)
    assert [r["action"] for r in rows] == ["reuse"] * 6 and "from run smoke-1" in rows[0]["why"], rows
    changed = leukolab(workspace, "run", "--dry-run", "--profile", "smoke", "--param", "classify.epochs=2", timeout=300)
    assert changed.returncode == 0, changed.stderr[-3000:]
    lines = {line.split()[0]: line for line in changed.stdout.splitlines() if line.strip()}
    assert "reuse" in lines["etl"] and "reuse" in lines["segment-unet-mobilenet"]
    assert "changed or never run" in lines["classify-simple-cnn"] and "stale: classify-simple-cnn runs first" in lines["evaluate"]
    assert "nothing was run" in changed.stdout
    assert sorted(p.name for p in (workspace / "runs").iterdir()) == before, "a dry run wrote a run"


@pytest.mark.integration
def test_runs_and_compare_print_json(smoke_run):
    workspace, _ = smoke_run
    listed = json.loads(leukolab(workspace, "runs", "list", "--json", timeout=120).stdout)
    assert any(r["run"] == "smoke-1" and r["status"] == "finished" for r in listed), listed
    shown = json.loads(leukolab(workspace, "runs", "show", "smoke-1", "--json", timeout=120).stdout)
    assert [t["task"] for t in shown["tasks"]][:1] == ["etl"] and shown["mlflow_parent_run_id"]
    compared = json.loads(leukolab(workspace, "compare", "smoke-1", "smoke-1", "--json", timeout=120).stdout)
    assert {"provenance", "parameters", "stages", "metrics"} <= set(compared) and compared["metrics"], compared.keys()
