"""Prometheus and the dashboard: ``promtool check config``/``check rules`` pass; every metric the dashboard and the
alerts query is one the running API exports; a real Prometheus with the committed scrape config and alert rules,
pointed at a real API, counts the predictions this test makes and runs every dashboard query."""

from __future__ import annotations

import json
import re
import subprocess
import time

import httpx
import pytest
import yaml
from conftest import status_of
from stack_files import ALERT_RULES, DASHBOARD, DATASOURCES, PROMETHEUS_CONFIG

from leukolab.processes.background import Background, free_port, wait_until_ready


PROMETHEUS_SERIES = {"up"}
"""Series Prometheus makes itself, which queries may use beside the API's."""
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s"}
"""Grafana's built-in variables, as the real Prometheus test substitutes them."""


# --- Prometheus and the dashboard --------------------------------------------------------------------

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                   "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (not functions, keywords, labels or numbers)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if match[0].lower() in PROMQL_KEYWORDS or expr[match.end():].lstrip().startswith("("):
            continue
        names.add(match[0])
    return names


def test_metric_name_extraction():
    assert metric_names('histogram_quantile(0.95, sum by (le) (rate(leukolab_inference_seconds_bucket[$__rate_interval])))') \
        == {"leukolab_inference_seconds_bucket"}
    assert metric_names('(up{job="a"} == 1) unless on (job, instance) leukolab_model_info') == {"up", "leukolab_model_info"}
    assert metric_names("sum(rate(a_total[5m])) / clamp_min(sum(rate(b_total[5m])), 1e-9) > 0.2") == {"a_total", "b_total"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every query in the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERT_RULES.read_text())["groups"] for rule in group["rules"]]


def test_dashboard_is_complete_and_uses_the_provisioned_data_source():
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    assert dashboard["uid"] and dashboard["title"]
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        assert panel["targets"], panel["title"]
        for holder in [panel, *panel["targets"]]:
            assert holder["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]
        assert len({target["refId"] for target in panel["targets"]}) == len(panel["targets"])
    queries = dashboard_queries()
    by_title = {title.lower(): [expr for t, expr in queries if t == title] for title, _ in queries}

    def panel_with(*words: str) -> list[str]:
        matches = [exprs for title, exprs in by_title.items() if all(word in title for word in words)]
        assert matches, f"no panel titled with {words}"
        return matches[0]

    assert any("leukolab_requests_total" in expr for expr in panel_with("request rate"))
    latency = panel_with("latency")
    assert sorted(re.search(r"histogram_quantile\(([\d.]+)", expr)[1] for expr in latency) == ["0.5", "0.95", "0.99"]
    assert all("leukolab_inference_seconds_bucket" in expr for expr in latency)
    assert any("predicted_class" in expr for expr in panel_with("predictions by class"))
    assert any("leukolab_prediction_confidence" in expr for expr in panel_with("confidence", "trend"))
    assert panel_with("drift") == ["max(leukolab_low_confidence_alert)", "max(leukolab_colour_drift_alert)"]
    assert any("leukolab_batch_size" in expr for expr in panel_with("batch size"))
    assert any("reason" in expr for expr in panel_with("errors by reason"))
    assert any("leukolab_model_info" in expr for expr in panel_with("model version"))
    assert any("leukolab_referrals_total" in expr for expr in panel_with("referral rate"))


def test_dashboard_and_alerts_query_only_metrics_the_api_exports(model_env):
    """Every series a dashboard panel or an alert rule selects is exported by the real API after traffic."""
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from leukolab.serving.app import create_app

    with TestClient(create_app(model_env["uri"])) as client:
        assert client.post("/predict", files={"file": ("smear.jpg", model_env["example_image"])}).status_code == 200
        assert client.post("/predict", files={"file": ("notes.txt", b"not an image")}).status_code == 415
        exposition = client.get("/metrics").text
    exported = {sample.name for family in text_string_to_metric_families(exposition) for sample in family.samples}
    queries = dashboard_queries() + [(rule["alert"], rule["expr"]) for rule in alert_rules()]
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - exported - PROMETHEUS_SERIES
        assert not unknown, f"{where} queries {sorted(unknown)}, which the API does not export ({expr!r})"


@pytest.mark.integration
def test_promtool_accepts_the_config_and_the_alert_rules(tools):
    for args in (["check", "config", str(PROMETHEUS_CONFIG)], ["check", "rules", str(ALERT_RULES)]):
        result = subprocess.run([str(tools["promtool"]), *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in subprocess.run(
        [str(tools["promtool"]), "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True, timeout=60).stdout


def prometheus_query(url: str, query: str) -> list[dict]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=10, trust_env=False).json()
    assert response["status"] == "success", f"{query}: {response}"
    return response["data"]["result"]


def poll(what: str, check, seconds: float = 30.0, interval: float = 0.5):
    """``check()`` until it returns something truthy; fail after ``seconds`` with the last value."""
    deadline, last = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        if last := check():
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not seen within {seconds:.0f} s (last: {last!r})")


@pytest.mark.integration
def test_real_prometheus_scrapes_the_api_and_answers_the_dashboard(tools, model_env, tmp_path):
    """The committed scrape config and rules, the API target moved to a local server: Prometheus counts our predictions."""
    from prometheus_client.parser import text_string_to_metric_families

    from leukolab.serving.client import post_images
    from leukolab.serving.launch import start_server

    predictions = 7
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / name) for name in config["rule_files"]]
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"] == "leukolab-api"]
    assert len(config["scrape_configs"]) == 1

    with start_server(model_env["uri"], port=0, log_path=tmp_path / "api.log", timeout=120) as api:
        config["scrape_configs"][0]["static_configs"][0]["targets"] = [api.url.removeprefix("http://")]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port, log = free_port(), tmp_path / "prometheus.log"
        prometheus = Background.start(
            [str(tools["prometheus"]), f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            log, "prometheus", append=False, own_group=True, grace=15)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(lambda: status_of(f"{url}/-/ready") == 200, [prometheus], 60, interval=0.3)
            # Predictions made before the first scrape would show in the counter but not in increase().
            poll("a first scrape of the API", lambda: prometheus_query(url, "leukolab_predictions_total"))
            for sent in post_images(f"{api.url}/predict", [model_env["example_image"]] * predictions, "smear.jpg",
                                    "image/jpeg"):
                assert sent.response.status_code == 200, sent.response.text

            def counted():
                result = prometheus_query(url, 'sum(leukolab_predictions_total{job="leukolab-api"})')
                return result and float(result[0]["value"][1]) == predictions and result

            poll(f"sum(leukolab_predictions_total) == {predictions} in Prometheus", counted)
            targets = httpx.get(f"{url}/api/v1/targets", timeout=10, trust_env=False).json()["data"]["activeTargets"]
            assert [(t["labels"]["job"], t["health"]) for t in targets] == [("leukolab-api", "up")]

            # Prometheus' counts per class are the API's own.
            api_metrics = httpx.get(f"{api.url}/metrics", timeout=10, trust_env=False).text
            own = {sample.labels["predicted_class"]: sample.value for family in text_string_to_metric_families(api_metrics)
                   for sample in family.samples if sample.name == "leukolab_predictions_total"}
            scraped = {row["metric"]["predicted_class"]: float(row["value"][1])
                       for row in prometheus_query(url, "sum by (predicted_class) (leukolab_predictions_total)")}
            assert scraped == own and sum(own.values()) == predictions

            # Every dashboard query runs; the panels that summarise traffic have data.
            for title, expr in dashboard_queries():
                query = expr
                for variable, value in GRAFANA_VARIABLES.items():
                    query = query.replace(variable, value)
                result = prometheus_query(url, query)
                if title in {"Served model", "Model version", "Drift alerts (low confidence, colour)", "Input colour distance from training"}:
                    assert result, f"{title}: {query} returned nothing"
                if title in {"Predictions in range", "Class mix over the range"}:  # increase() extrapolates
                    assert sum(float(row["value"][1]) for row in result) >= predictions, f"{title}: {result}"
            model = prometheus_query(url, "max by (name, version, run_id) (leukolab_model_info)")[0]["metric"]
            assert (model["name"], model["version"], model["run_id"]) == ("leukolab", model_env["version"], model_env["run_id"])

            # The alert rules load and evaluate; with the API up and its model loaded, those two stay quiet.
            def evaluated():
                groups = httpx.get(f"{url}/api/v1/rules", timeout=10, trust_env=False).json()["data"]["groups"]
                rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
                return rules if all(rule.get("health") == "ok" for rule in rules.values()) and rules else None

            rules = poll("every alert rule evaluated with health ok", evaluated)
            assert set(rules) == {rule["alert"] for rule in alert_rules()}
            assert rules["LeukolabApiDown"]["state"] == rules["LeukolabModelNotLoaded"]["state"] == "inactive"
        finally:
            prometheus.stop()
