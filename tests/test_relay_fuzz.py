"""Schemathesis fuzzes the relay's own OpenAPI document (the /v1 routes over a user's mirrors plus the relay's
tokens, sites, commands and sync routes) against a running relay, as a logged-in user whose site has pushed
rows: no answer is a 5xx, and every error has the documented shape."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

pytest.importorskip("sqlalchemy", reason="the relay needs its extra (balsam[relay])")
schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from tests.test_relay_server import client, login, site_rows  # noqa: E402

NOT_FUZZED = ("logout", "revoke_token")
"""Revoking the fuzzer's own token would turn every later case into a 401 (the routes are tested in test_relay_server)."""


@pytest.fixture
def relay_served(tmp_path: Path) -> Iterator[Dict[str, Any]]:
    """A relay on SQLite (writes wait 0.2 s for their site); alice's site 7 linked and pushed (3 jobs)."""
    from tests.relay_support import relay_store, served

    for store in relay_store("sqlite", tmp_path):
        store.add_user("alice", "alice-password")
        with served(store, wait_s=0.2) as (server, url):
            alice = login(url, "alice", "alice-password")
            link = alice.request("POST", "/v1/sites", {"site_id": 7, "name": "alice-site", "hostname": "h", "path": "/p"})
            client(url, link["token"]).request("POST", "/v1/sync/push", {
                "submission_id": "fuzz-first", "last_seq": 1, "items": site_rows(7, 3), "site": {"row": {"name": "alice-site"}}})
            yield {"url": url, "token": alice.token}


@pytest.fixture
def relay_schema(relay_served: Dict[str, Any]) -> Any:
    with urllib.request.urlopen(f"{relay_served['url']}/v1/openapi.json", timeout=30) as r:
        doc = json.loads(r.read())
    assert {"/v1/tokens", "/v1/sync/push", "/v1/commands/{id}", "/v1/jobs"} <= set(doc["paths"])  # the relay's own routes too
    schema = schemathesis.openapi.from_dict(doc)
    for name in NOT_FUZZED:
        schema = schema.exclude(operation_id=name)
    return schema


schema = schemathesis.pytest.from_fixture("relay_schema")


@pytest.mark.slow
@schema.parametrize()
@hypothesis.settings(max_examples=10, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_every_relay_operation_answers_in_its_documented_shape(case: Any, relay_served: Dict[str, Any]) -> None:
    response = case.call(base_url=relay_served["url"], headers={"Authorization": f"Bearer {relay_served['token']}"})
    assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])
    if (response.status_code >= 400 or response.status_code == 202) and case.path not in ("/", "/assets/{path}"):
        body = response.json()
        assert set(body["error"]) >= {"code", "message", "field"}, body
