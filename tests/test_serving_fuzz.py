"""Property-based fuzzing of every route against the API's own OpenAPI document (schemathesis), on the real server on
127.0.0.1: no answer is a server error, and every answer's status and body are the ones the document gives for that
route. (In process, schemathesis ends an app's lifespan after each test, which would reload the model each time.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from leukolab.serving.app import create_app
from leukolab.serving.launch import start_server

ROOT = Path(__file__).resolve().parents[1]
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
schema = schemathesis.openapi.from_dict(create_app().openapi(),
                                        config=schemathesis.Config.from_path(ROOT / "schemathesis.toml"))
"""The app's own document (building it loads no model), with the repository's schemathesis settings: the /v2
routes' {name} and {version} are the served model's."""


@pytest.fixture(scope="module")
def server(model_env, tmp_path_factory):
    assert model_env["version"] == "1", "schemathesis.toml names version 1"
    with start_server(model_env["uri"], log_path=tmp_path_factory.mktemp("fuzzed") / "server.log", timeout=90) as server:
        yield server
    assert server.process.returncode is not None


@pytest.fixture(scope="module")
def http():
    with requests.Session() as session:
        session.trust_env = False  # no proxy for a local server
        yield session


@pytest.mark.integration
@pytest.mark.timeout(120)
@schema.parametrize()
@settings(max_examples=10, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
def test_every_route_answers_as_its_document_says(case, server, http):
    case.call_and_validate(base_url=server.url, session=http, checks=CHECKS, timeout=30)
