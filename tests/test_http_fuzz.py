"""Schemathesis fuzzes the /v1 OpenAPI document against a running API server: no answer is a 5xx, and every
documented status and body shape holds (errors included)."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")


@pytest.fixture
def served(site: Any, hello: Any) -> Iterator[Any]:
    from balsam.http.auth import Principal, TokenSet
    from balsam.services.api_server import start_api_server
    from balsam.settings import ApiSettings
    from balsam.site import this_host

    hello.submit("fuzz/1", say_hello_to="x")
    tokens = TokenSet()
    token = tokens.issue(Principal(kind="site", name="fuzzer"))
    server = start_api_server(site.path, site.store, ApiSettings(bind="127.0.0.1"), host=this_host(), tokens=tokens)
    yield server, token
    server.stop()


@pytest.fixture
def api_schema(served: Any) -> Any:
    from balsam.http.routes import openapi

    return schemathesis.openapi.from_dict(openapi())


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.slow
@schema.parametrize()
@hypothesis.settings(max_examples=15, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_every_operation_answers_in_its_documented_shape(case: Any, served: Any) -> None:
    server, token = served
    response = case.call(base_url=f"http://127.0.0.1:{server.port}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])
    if response.status_code >= 400 and case.path not in ("/", "/assets/{path}"):
        body = response.json()
        assert set(body["error"]) >= {"code", "message", "field"}, body
