"""Globus through globus-sdk with its own testing fixtures (registered responses; no network): a batch submitted
as one task with the settings' options, polled to SUCCEEDED (the job moves on) or FAILED (the job fails with
Globus's reason), 250 items cut into the right number of tasks, API errors kept, and the login flow storing
tokens with mode 0600 and refreshing them."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

globus_sdk = pytest.importorskip("globus_sdk")
responses = pytest.importorskip("responses")
from globus_sdk.testing import RegisteredResponse, load_response  # noqa: E402

from balsam.api import ApplicationDefinition, Job, TransferItem  # noqa: E402
from balsam.platforms.transfer import TransferItem as Item  # noqa: E402
from balsam.platforms.transfer import TransferState, get_transfer  # noqa: E402
from balsam.platforms.transfer.globus_auth import login, transfer_client  # noqa: E402
from balsam.services.transfers import TransferService  # noqa: E402
from balsam.settings import SiteSettings, TransferSettings  # noqa: E402
from balsam.site import refresh_site_row  # noqa: E402
from tests.cli_helpers import invoke  # noqa: E402

FAR = "ddb59aef-6d04-11e5-ba46-22000b92c6ec"  # the instrument's endpoint
HOME = "4d6f2e0a-5a4e-4b4b-9d3a-2f1c3e7b9a10"  # this site's endpoint
TASKS = [f"a1a1a1a1-0000-4000-8000-00000000000{i}" for i in range(1, 8)]


@pytest.fixture
def mock() -> Iterator[Any]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        load_response(globus_sdk.TransferClient.get_submission_id, requests_mock=rsps)
        yield rsps


def client() -> Any:
    return globus_sdk.TransferClient(authorizer=globus_sdk.AccessTokenAuthorizer("test-token"))


def accept(rsps: Any, task_id: str) -> None:
    RegisteredResponse(service="transfer", method="POST", path="/v0.10/transfer",
                       json={"DATA_TYPE": "transfer_result", "code": "Accepted", "task_id": task_id,
                             "submission_id": "sub", "message": "queued"}).add(requests_mock=rsps)


def task(rsps: Any, task_id: str, status: str, **extra: Any) -> None:
    doc = {"DATA_TYPE": "task", "task_id": task_id, "status": status, "type": "TRANSFER", "files": 1,
           "bytes_transferred": 4_000_000, "request_time": "2026-11-30T01:00:00+00:00", **extra}
    if status in ("SUCCEEDED", "FAILED"):
        doc.setdefault("completion_time", "2026-11-30T01:00:08+00:00")
    RegisteredResponse(service="transfer", method="GET", path=f"/v0.10/task/{task_id}", json=doc).add(requests_mock=rsps)


def submitted(rsps: Any) -> List[Dict[str, Any]]:
    return [json.loads(c.request.body) for c in rsps.calls if c.request.method == "POST" and c.request.url.endswith("/transfer")]


def test_a_batch_is_one_task_with_the_settings_options_and_site_paths_rewritten(mock: Any, tmp_path: Path) -> None:
    adapter = get_transfer("globus", state_dir=tmp_path, client=client(), options={
        "local_endpoint": HOME, "site_path": "/lus/site", "endpoint_site_path": "/~/site", "sync_level": "checksum",
        "verify_checksum": "true", "encrypt_data": "false"})
    accept(mock, TASKS[0])
    task_id = adapter.submit([Item(f"{FAR}:/beamline/scan1.h5", "/lus/site/data/j1/scan.h5"),
                              Item(f"{FAR}:/beamline/calib", "/lus/site/data/j1/calib", recursive=True)])
    assert task_id == f"globus:{TASKS[0]}"
    (body,) = submitted(mock)
    assert (body["source_endpoint"], body["destination_endpoint"]) == (FAR, HOME)
    assert (body["sync_level"], body["verify_checksum"], body["encrypt_data"]) == (3, True, False)
    assert [(d["source_path"], d["destination_path"], d["recursive"]) for d in body["DATA"]] == [
        ("/beamline/scan1.h5", "/~/site/data/j1/scan.h5", False), ("/beamline/calib", "/~/site/data/j1/calib", True)]
    task(mock, TASKS[0], "ACTIVE", nice_status="Queued")
    task(mock, TASKS[0], "SUCCEEDED")
    assert adapter.poll(task_id).state is TransferState.ACTIVE
    done = adapter.poll(task_id)
    assert done.state is TransferState.DONE and not done.failed
    assert (done.bytes, done.seconds, done.bytes_per_s) == (4_000_000, 8.0, 500_000.0)


def test_failed_tasks_and_api_errors_keep_globus_words(mock: Any, tmp_path: Path) -> None:
    adapter = get_transfer("globus", state_dir=tmp_path, client=client(), options={"local_endpoint": HOME})
    task(mock, TASKS[1], "FAILED", nice_status="PERMISSION_DENIED",
         fatal_error={"code": "PERMISSION_DENIED", "description": "permission denied on /beamline/secret.h5"})
    failed = adapter.poll(f"globus:{TASKS[1]}")
    assert failed.state is TransferState.ERROR
    assert "PERMISSION_DENIED: permission denied on /beamline/secret.h5" in failed.error
    task(mock, TASKS[2], "INACTIVE", nice_status_details="Credentials expired for the source endpoint")
    stalled = adapter.poll(f"globus:{TASKS[2]}")
    assert stalled.state is TransferState.INACTIVE and "Credentials expired" in stalled.error
    RegisteredResponse(service="transfer", method="POST", path="/v0.10/transfer", status=400,
                       json={"code": "ClientError.BadRequest.NoTransferItems", "message": "no such endpoint route",
                             "request_id": "r"}).add(requests_mock=mock)
    from balsam.exceptions import TransferError

    with pytest.raises(TransferError, match="ClientError.BadRequest.*HTTP 400.*no such endpoint route") as refused:
        adapter.submit([Item(f"{FAR}:/a", "/site/a")])
    assert not refused.value.transient
    RegisteredResponse(service="transfer", method="POST", path="/v0.10/transfer", status=503,
                       json={"code": "ServiceUnavailable", "message": "maintenance", "request_id": "r"}).add(requests_mock=mock)
    with pytest.raises(TransferError, match="maintenance") as busy:
        get_transfer("globus", state_dir=tmp_path, client=globus_sdk.TransferClient(
            authorizer=globus_sdk.AccessTokenAuthorizer("t"), retry_config=globus_sdk.transport.RetryConfig(max_retries=0)),
            options={"local_endpoint": HOME}).submit([Item(f"{FAR}:/a", "/site/a")])
    assert busy.value.transient


class Scan(ApplicationDefinition):
    site = "test-site"
    command_template = "true"
    transfers = {"scan": {"required": True, "direction": "in", "local_path": "scan.h5"},
                 "result": {"required": False, "direction": "out", "local_path": "result.h5"}}


def globus_service(site: Any, **kw: Any) -> TransferService:
    settings = TransferSettings(transfer_locations={"beamline": f"globus://{FAR}"}, globus_endpoint_id=HOME, **kw)
    refresh_site_row(site.store, SiteSettings(transfers=settings))
    Scan.sync()
    return TransferService(site, settings, globus_client_factory=client)


def test_250_items_go_in_three_tasks_and_their_jobs_move_on(site: Any, mock: Any) -> None:
    service = globus_service(site, batch_size=100, max_concurrent_transfers=5)
    jobs = Job.objects.bulk_create([Job(workdir=f"s{i}", app_id=Scan, transfers={"scan": f"beamline:/beamline/scan{i}.h5"})
                                    for i in range(250)])
    for t in TASKS[:3]:
        accept(mock, t)
    service.run_cycle()
    assert [len(b["DATA"]) for b in submitted(mock)] == [100, 100, 50]
    assert {TransferItem.objects.get(job_id=jobs[0].id).task_id, TransferItem.objects.get(job_id=jobs[249].id).task_id} == {
        f"globus:{TASKS[0]}", f"globus:{TASKS[2]}"}
    paths = [d["destination_path"] for d in submitted(mock)[2]["DATA"]]
    assert paths[-1] == str(site.layout.data / "s249" / "scan.h5")  # no endpoint_site_path: the same path
    for t in TASKS[:3]:
        task(mock, t, "SUCCEEDED")
    service.run_cycle()
    assert Job.objects.filter(state="STAGED_IN").count() == 250
    info = TransferItem.objects.get(job_id=jobs[7].id).transfer_info
    assert info["bytes_per_s"] == 500_000.0


def test_a_failed_globus_task_fails_its_jobs_with_the_reason(site: Any, mock: Any) -> None:
    service = globus_service(site)
    job = Scan.submit(workdir="s", transfers={"scan": "beamline:/beamline/gone.h5"})
    accept(mock, TASKS[3])
    service.run_cycle()
    task(mock, TASKS[3], "FAILED", fatal_error={"code": "FILE_NOT_FOUND", "description": "No such file: /beamline/gone.h5"})
    service.run_cycle()
    failed = Job.objects.get(id=job.id)
    assert str(failed.state) == "FAILED"
    assert "FILE_NOT_FOUND: No such file: /beamline/gone.h5" in failed.history()[-1].data["message"]
    assert TransferItem.objects.get(job_id=job.id).state == "error"


def token_response(rsps: Any, access: str, refresh: str = "refresh-1") -> None:
    RegisteredResponse(service="auth", method="POST", path="/v2/oauth2/token", json={
        "access_token": access, "expires_in": 172800, "resource_server": "transfer.api.globus.org",
        "refresh_token": refresh, "scope": "urn:globus:auth:scope:transfer.api.globus.org:all", "token_type": "Bearer",
        "other_tokens": []}).add(requests_mock=rsps)


def test_login_stores_tokens_0600_and_they_are_refreshed(mock: Any, tmp_path: Path) -> None:
    path = tmp_path / "state" / "globus-tokens.json"
    shown: List[str] = []
    token_response(mock, "access-1")
    login("1b0dc9d3-0a2b-4000-8000-000000000001", path, ask=lambda prompt: "the-code", say=shown.append)
    assert any(line.startswith("https://auth.globus.org/") and "code_challenge" in line for line in shown)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())
    assert (stored["access_token"], stored["refresh_token"]) == ("access-1", "refresh-1")
    stored["expires_at_seconds"] = int(time.time()) - 10  # expired: the next call refreshes first
    path.write_text(json.dumps(stored))
    token_response(mock, "access-2")
    task(mock, TASKS[4], "ACTIVE")
    tc = transfer_client(None, path)
    tc.get_task(TASKS[4])
    assert json.loads(path.read_text())["access_token"] == "access-2"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    last = [c.request for c in mock.calls if "/task/" in c.request.url][-1]
    assert last.headers["Authorization"] == "Bearer access-2"


def test_globus_login_command(site: Any, mock: Any) -> None:
    import yaml

    settings = site.path / "settings.yml"
    data = yaml.safe_load(settings.read_text()) or {}
    data.setdefault("transfers", {})["globus_client_id"] = "1b0dc9d3-0a2b-4000-8000-000000000001"
    settings.write_text(yaml.safe_dump(data))
    token_response(mock, "access-cli")
    result = invoke("site", "globus-login", "--site", str(site.path), input="the-code\n")
    assert result.exit_code == 0, result.stderr
    assert "https://auth.globus.org/" in result.stdout and "Logged in" in result.stdout
    assert stat.S_IMODE((site.layout.state / "globus-tokens.json").stat().st_mode) == 0o600


def test_without_credentials_items_wait_and_say_how_to_log_in(site: Any) -> None:
    settings = TransferSettings(transfer_locations={"beamline": f"globus://{FAR}"}, globus_endpoint_id=HOME)
    refresh_site_row(site.store, SiteSettings(transfers=settings))
    Scan.sync()
    service = TransferService(site, settings)  # the real client factory: no token file yet
    job = Scan.submit(workdir="s", transfers={"scan": "beamline:/beamline/scan.h5"})
    service.run_cycle()
    item = TransferItem.objects.get(job_id=job.id)
    assert item.state == "pending" and "run: balsam site globus-login" in item.transfer_info["last_error"]
    assert str(Job.objects.get(id=job.id).state) == "READY"  # not failed: it goes once the user logs in
