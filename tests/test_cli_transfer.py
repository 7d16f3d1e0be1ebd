"""``balsam transfer ls`` (filters: state, direction, protocol, job) and the transfers section of ``balsam job show``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from balsam.api import ApplicationDefinition, Job, TransferItem
from balsam.services.transfers import TransferService
from balsam.settings import SiteSettings, TransferSettings
from balsam.site import refresh_site_row
from tests.cli_helpers import fails, invoke, ok


class Moves(ApplicationDefinition):
    site = "test-site"
    command_template = "true"
    transfers = {
        "deck": {"required": True, "direction": "in", "local_path": "deck.txt"},
        "out": {"required": False, "direction": "out", "local_path": "out.txt"},
    }


def staged_site(site: Any, tmp_path: Path) -> TransferService:
    (tmp_path / "deck.txt").write_text("deck")
    settings = TransferSettings(transfer_locations={"here": "local", "dtn": "rsync://me@dtn.example.org"})
    refresh_site_row(site.store, SiteSettings(transfers=settings))
    Moves.sync()
    return TransferService(site, settings)


def test_ls_filters_by_state_direction_protocol_and_job(site: Any, tmp_path: Path) -> None:
    service = staged_site(site, tmp_path)
    good = Moves.submit(workdir="good", transfers={"deck": f"here:{tmp_path}/deck.txt", "out": "dtn:/archive/out.txt"})
    bad = Moves.submit(workdir="bad", transfers={"deck": f"here:{tmp_path}/nope.txt"})
    for _ in range(200):
        service.run_cycle()
        if not TransferItem.objects.filter(state=["pending", "active"], direction="in").exists():
            break
        __import__("time").sleep(0.05)
    listing = ok("transfer", "ls").stdout
    assert "done" in listing and "error" in listing and "awaiting_job" in listing and "cp:" in listing
    wide = ok("transfer", "ls", env={"COLUMNS": "200"}).stdout  # site-unique ids are 16 digits: give the reason room
    assert "cp: cannot stat" in wide  # the reason, in the last column
    errors = json.loads(ok("transfer", "ls", "-s", "error", "--json").stdout)
    assert [(e["job_id"], e["state"], e["protocol"]) for e in errors] == [(bad.id, "error", "local")]
    assert "No such file" in errors[0]["transfer_info"]["error"]
    outs = json.loads(ok("transfer", "ls", "-d", "out", "--json").stdout)
    assert [(o["job_id"], o["slot"], o["state"]) for o in outs] == [(good.id, "out", "awaiting_job")]
    assert [t.location_alias for t in TransferItem.objects.filter(protocol="rsync")] == ["dtn"]  # the Python API too
    assert TransferItem.objects.filter(protocol=["local", "rsync"], state="done").count() == 1
    rsync = json.loads(ok("transfer", "ls", "--protocol", "rsync", "--json").stdout)
    assert [r["location_alias"] for r in rsync] == ["dtn"]
    assert json.loads(ok("transfer", "ls", "--protocol", "local", "-j", str(good.id), "--json").stdout)[0]["state"] == "done"
    assert "no transfer location uses globus" in fails("transfer", "ls", "--protocol", "globus")
    refused = invoke("transfer", "ls", "-s", "finished")
    assert refused.exit_code == 2 and "'finished' is not one of" in refused.stderr


def test_job_show_lists_the_jobs_transfers_with_state_and_task(site: Any, tmp_path: Path) -> None:
    service = staged_site(site, tmp_path)
    job = Moves.submit(workdir="good", transfers={"deck": f"here:{tmp_path}/deck.txt", "out": "dtn:/archive/out.txt"})
    for _ in range(200):
        service.run_cycle()
        if str(Job.objects.get(id=job.id).state) == "STAGED_IN":
            break
        __import__("time").sleep(0.05)
    task = TransferItem.objects.get(job_id=job.id, direction="in").task_id
    out = ok("job", "show", str(job.id)).stdout
    section = out[out.index("Transfers:"):out.index("History:")]
    assert "deck" in section and "done" in section and task in section
    assert "out" in section and "awaiting_job" in section and "dtn:/archive/out.txt" in section
    shown = json.loads(ok("job", "show", str(job.id), "--json").stdout)
    assert {(t["slot"], t["state"], t["task_id"]) for t in shown["transfers"]} == {("deck", "done", task), ("out", "awaiting_job", "")}


def test_site_sync_refuses_a_bad_location_in_one_line(site: Any) -> None:
    settings = site.path / "settings.yml"
    settings.write_text(settings.read_text() + "\ntransfers:\n  transfer_locations:\n    dtn: scp://me@dtn\n")
    assert "transfer location 'dtn': 'scp://me@dtn' is not one of local, rsync://" in fails("site", "sync", "--site", str(site.path), code=2)
