"""The transfer service with local locations (cp, hard links, rsync on this host): slots checked at creation,
stage-in and stage-out move the job, a failure fails the job with the reason, batching and concurrency
limits, retries with backoff, visibility through TransferItem queries. Over real ssh: test_transfers_sshd.py."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, List

import pytest

from balsam.api import ApplicationDefinition, Job, TransferItem
from balsam.exceptions import AppError, BalsamError, ConfigError
from balsam.platforms.transfer import ItemFailure, TransferAdapter, TransferState, TransferStatus
from balsam.services.transfers import Location, TransferService, parse_location, retry_pause
from balsam.settings import TransferSettings
from tests.helpers import advance
from tests.transfer_support import cycle_until, make_service

needs_rsync = pytest.mark.skipif(not shutil.which("rsync"), reason="rsync is not installed (bash .ci/sshd.sh installs it)")


class Staged(ApplicationDefinition):
    site = "test-site"
    command_template = "true"
    transfers = {
        "deck": {"required": True, "direction": "in", "local_path": "input/deck.txt"},
        "tree": {"required": False, "direction": "in", "local_path": "inputs", "recursive": True},
        "results": {"required": False, "direction": "out", "local_path": "results", "recursive": True},
        "log": {"required": False, "direction": "out", "local_path": "run.log"},
    }


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    root = tmp_path / "remote"
    (root / "in" / "tree" / "sub").mkdir(parents=True)
    (root / "in" / "deck.txt").write_text("deck contents")
    (root / "in" / "tree" / "a.txt").write_text("A")
    (root / "in" / "tree" / "sub" / "b.txt").write_text("B")
    return root


@pytest.mark.parametrize("url", ["local", pytest.param("rsync://", marks=needs_rsync)])
def test_files_and_directories_stage_in_and_out_and_move_the_job(site: Any, remote: Path, url: str) -> None:
    service = make_service(site, {"store": url})
    Staged.sync()
    job = Staged.submit(workdir="t", transfers={"deck": f"store:{remote}/in/deck.txt", "tree": f"store:{remote}/in/tree",
                                                "results": f"store:{remote}/out/results", "log": f"store:{remote}/out/logs/run.log"})
    assert str(job.state) == "READY"
    cycle_until(service, job.id, "STAGED_IN")
    work = site.layout.data / "t"
    assert (work / "input" / "deck.txt").read_text() == "deck contents"
    assert (work / "inputs" / "sub" / "b.txt").read_text() == "B" and (work / "inputs" / "a.txt").read_text() == "A"
    stage_in = TransferItem.objects.filter(job_id=job.id, direction="in")
    assert [t.state for t in stage_in] == ["done", "done"]
    assert all(t.task_id.startswith(("cp:", "rsync:")) for t in stage_in)
    assert [t.state for t in TransferItem.objects.filter(job_id=job.id, direction="out")] == ["awaiting_job"] * 2
    advance(Job.objects.get(id=job.id), "PREPROCESSED", "RUNNING", "RUN_DONE")
    (work / "results" / "deep").mkdir(parents=True)
    (work / "results" / "deep" / "r.txt").write_text("result")
    (work / "run.log").write_text("log")
    advance(Job.objects.get(id=job.id), "POSTPROCESSED")
    cycle_until(service, job.id, "JOB_FINISHED")
    assert (remote / "out" / "results" / "deep" / "r.txt").read_text() == "result"
    assert (remote / "out" / "logs" / "run.log").read_text() == "log"
    assert TransferItem.objects.filter(job_id=job.id, state="done").count() == 4
    states = [e.to_state for e in Job.objects.get(id=job.id).history()]
    assert states.index("STAGED_IN") < states.index("RUNNING") < states.index("JOB_FINISHED")


def test_local_hard_links_share_the_file(site: Any, remote: Path) -> None:
    service = make_service(site, {"store": "local"}, local_link=True)
    Staged.sync()
    job = Staged.submit(workdir="t", transfers={"deck": f"store:{remote}/in/deck.txt"})
    cycle_until(service, job.id, "STAGED_IN")
    staged = site.layout.data / "t" / "input" / "deck.txt"
    assert staged.read_text() == "deck contents" and os.path.samefile(staged, remote / "in" / "deck.txt")


@pytest.mark.parametrize("url", ["local", pytest.param("rsync://", marks=needs_rsync)])
def test_a_missing_source_fails_its_job_with_the_tools_message_and_not_the_others(site: Any, remote: Path, url: str) -> None:
    service = make_service(site, {"store": url})
    Staged.sync()
    bad = Staged.submit(workdir="bad", transfers={"deck": f"store:{remote}/in/missing.txt"})
    good = Staged.submit(workdir="good", transfers={"deck": f"store:{remote}/in/deck.txt"})
    failed = cycle_until(service, bad.id, "FAILED")
    assert str(Job.objects.get(id=good.id).state) == "STAGED_IN"  # same batch, its own outcome
    message = failed.history()[-1].data["message"]
    assert "stage-in transfer" in message and "missing.txt" in message and "No such file" in message
    item = TransferItem.objects.get(job_id=bad.id)
    assert item.state == "error" and "missing.txt" in item.transfer_info["error"]


def test_bad_slots_and_aliases_are_one_clear_error_and_nothing_is_written(site: Any, remote: Path) -> None:
    make_service(site, {"store": "local"})
    Staged.sync()
    cases = [
        ({"deck": f"store:{remote}/a", "nope": "store:/x"}, "no transfer slot 'nope'"),
        ({"deck": "elsewhere:/x"}, "unknown location alias 'elsewhere'"),
        ({"tree": f"store:{remote}/in/tree"}, "requires transfer slot 'deck'"),
        ({"deck": "store:relative/path"}, "must be absolute"),
        ({"deck": "no-alias-here"}, "location_alias:/absolute/path"),
    ]
    for transfers, expected in cases:
        with pytest.raises(BalsamError, match=expected):
            Staged.submit(workdir="w", transfers=transfers)
    with pytest.raises(BalsamError, match="requires transfer slot 'deck'"):
        Job.objects.bulk_create([Job(workdir="ok", app_id=Staged, transfers={"deck": f"store:{remote}/in/deck.txt"}),
                                 Job(workdir="bad", app_id=Staged)])
    assert Job.objects.count() == 0 and TransferItem.objects.count() == 0


@pytest.mark.parametrize("local_path", ["../escape.txt", "a/../../escape.txt", "/etc/passwd", "~/x"])
def test_a_slot_whose_local_path_leaves_the_workdir_is_refused(site: Any, local_path: str) -> None:
    with pytest.raises(AppError, match="local_path"):
        class Escapes(ApplicationDefinition):
            site = "test-site"
            command_template = "true"
            transfers = {"x": {"direction": "in", "local_path": local_path}}


GLOBUS_URL = "globus://ddb59aef-6d04-11e5-ba46-22000b92c6ec"


def test_location_urls() -> None:
    assert parse_location("a", "local") == Location("local")
    assert parse_location("a", "rsync://me@dtn.example.org") == Location("rsync", "me@dtn.example.org")
    # a globus:// location is read whether or not globus-sdk is installed here (its jobs need the extra)
    assert parse_location("a", GLOBUS_URL) == Location("globus", GLOBUS_URL[len("globus://"):])
    for bad, expected in [("globus://not-a-uuid", "globus://ENDPOINT_UUID"), ("ftp://x", "is not one of"),
                          ("rsync://host/with/path", "no path")]:
        with pytest.raises(ConfigError, match=expected):
            parse_location("a", bad)


@pytest.fixture
def without_globus_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "globus_sdk", None)  # as if it were not installed


def test_without_globus_sdk_the_site_works_and_a_globus_alias_names_the_extra(
        site: Any, remote: Path, without_globus_sdk: None, caplog: pytest.LogCaptureFixture) -> None:
    # the agent's transfer service starts (it says once what the location needs) ...
    service = make_service(site, {"hub": GLOBUS_URL, "store": "local"})
    assert "pip install 'balsam[globus]'" in caplog.text
    Staged.sync()
    # ... a job using the globus location is refused at creation, naming the extra, with nothing written ...
    with pytest.raises(BalsamError, match=r"location 'hub' is globus://.*pip install 'balsam\[globus\]'"):
        Job.objects.bulk_create([Job(workdir="ok", app_id=Staged, transfers={"deck": f"store:{remote}/in/deck.txt"}),
                                 Job(workdir="g", app_id=Staged, transfers={"deck": "hub:/data/deck.txt"})])
    assert Job.objects.count() == 0 and TransferItem.objects.count() == 0
    # ... and the rest of the site stages data as before
    job = Staged.submit(workdir="t", transfers={"deck": f"store:{remote}/in/deck.txt"})
    cycle_until(service, job.id, "STAGED_IN")
    assert (site.layout.data / "t" / "input" / "deck.txt").read_text() == "deck contents"


def test_without_globus_sdk_site_sync_notes_what_a_globus_location_needs(site: Any, without_globus_sdk: None) -> None:
    from tests.cli_helpers import ok

    with (site.path / "settings.yml").open("a") as f:
        f.write(f"\ntransfers:\n  transfer_locations:\n    hub: {GLOBUS_URL}\n")
    out = ok("site", "sync", "--site", "test-site").stdout
    assert "note: settings.yml: transfer location 'hub' is globus://" in out
    assert "pip install 'balsam[globus]'; jobs using it are refused until then" in out
    assert "settings.yml is valid" in out


def test_batches_follow_batch_size_and_at_most_max_concurrent_tasks_run(site: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(25):
        (src / f"f{i}.txt").write_text(str(i))
    service = make_service(site, {"a": "local", "b": "cp://"}, batch_size=4, max_concurrent_transfers=3)
    Staged.sync()
    jobs = Job.objects.bulk_create([Job(workdir=f"w{i}", app_id=Staged, transfers={"deck": f"{'ab'[i % 2]}:{src}/f{i}.txt"})
                                    for i in range(25)])
    service._start()
    tasks = {t.task_id for t in TransferItem.objects.filter(state="active")}
    # two aliases, one protocol and endpoint: one group of 25, cut into batches of 4; 3 run at once
    assert len(tasks) == 3 and TransferItem.objects.filter(state="active").count() == 12
    assert TransferItem.objects.filter(state="pending").count() == 13
    deadline = time.monotonic() + 60
    while Job.objects.filter(state="STAGED_IN").count() < 25:
        assert time.monotonic() < deadline, "not all staged in"
        service.run_cycle()
        assert len({t.task_id for t in TransferItem.objects.filter(state="active")}) <= 3
        time.sleep(0.05)
    assert len({t.task_id for t in TransferItem.objects.all()}) == 7  # ceil(25 / 4)
    for i in range(len(jobs)):
        assert (site.layout.data / f"w{i}" / "input" / "deck.txt").read_text() == str(i)
    info = TransferItem.objects.filter(job_id=jobs[0].id)[0].transfer_info
    assert info["seconds"] is not None and info["seconds"] >= 0
    assert info["bytes"] == 4  # its batch: the four one-byte files "0" to "3"


class FlakyAdapter(TransferAdapter):
    """Stands in for a remote protocol whose connection drops: every task ends with a transient failure."""

    name = "cp"

    def __init__(self) -> None:
        super().__init__()
        self.submitted: List[int] = []

    def cancel(self, task_id: str, grace_s: float = 5.0) -> None:
        raise AssertionError("nothing cancels a flaky task")

    def submit(self, items: Any) -> str:
        self.submitted.append(len(items))
        return f"cp:{len(self.submitted):032x}"

    def poll(self, task_id: str) -> TransferStatus:
        return TransferStatus(task_id, TransferState.ERROR, "rsync exit 255: Connection closed", 255,
                              {0: ItemFailure("rsync exit 255: Connection closed", transient=True)})


def test_transient_failures_are_retried_with_doubling_pauses_then_fail_the_job(site: Any, tmp_path: Path) -> None:
    now = [1000.0]
    service = make_service(site, {"store": "local"}, max_retries=2, retry_backoff_s=10.0)
    service.clock = lambda: now[0]
    flaky = FlakyAdapter()
    service._adapters["cp"] = flaky  # type: ignore[assignment]
    Staged.sync()
    job = Staged.submit(workdir="t", transfers={"deck": f"store:{tmp_path}/x"})
    service.run_cycle()  # submit
    service.run_cycle()  # poll: transient -> pending, retry in 10 s
    item = TransferItem.objects.get(job_id=job.id)
    assert (item.state, item.transfer_info["attempts"], item.transfer_info["retry_at"]) == ("pending", 1, 1010.0)
    assert "Connection closed" in item.transfer_info["last_error"]
    from balsam.site.diagnosis import explain

    why = " ".join(explain(site.store, site.path, job.id))  # balsam job show says why the job waits
    assert "is pending; try 2 at" in why and "Connection closed" in why
    service.run_cycle()
    assert len(flaky.submitted) == 1  # still pausing
    now[0] = 1010.0
    service.run_cycle()  # second try
    service.run_cycle()  # fails again: next pause 20 s
    assert TransferItem.objects.get(job_id=job.id).transfer_info["retry_at"] == 1030.0
    now[0] = 1030.0
    service.run_cycle()
    service.run_cycle()  # third failure: out of retries
    assert len(flaky.submitted) == 3
    item = TransferItem.objects.get(job_id=job.id)
    assert item.state == "error" and "gave up after 3 tries" in item.transfer_info["error"]
    failed = Job.objects.get(id=job.id)
    assert str(failed.state) == "FAILED" and "Connection closed" in failed.history()[-1].data["message"]
    assert [retry_pause(n, 10.0) for n in (1, 2, 3)] == [10.0, 20.0, 40.0] and retry_pause(30, 10.0) == 3600.0


def test_an_alias_removed_from_settings_fails_the_job_clearly(site: Any, remote: Path) -> None:
    make_service(site, {"store": "local"})
    Staged.sync()
    job = Staged.submit(workdir="t", transfers={"deck": f"store:{remote}/in/deck.txt"})
    service = TransferService(site, TransferSettings(transfer_locations={"other": "local"}))
    service.run_cycle()
    failed = Job.objects.get(id=job.id)
    assert str(failed.state) == "FAILED" and "'store' is not in settings.yml" in failed.history()[-1].data["message"]


def test_a_reset_or_rerun_job_tries_its_failed_transfers_again(site: Any, remote: Path) -> None:
    service = make_service(site, {"store": "local"})
    Staged.sync()
    job = Staged.submit(workdir="t", transfers={"deck": f"store:{remote}/in/late.txt", "log": f"store:{remote}/out/run.log"})
    cycle_until(service, job.id, "FAILED")  # the input is not there yet
    (remote / "in" / "late.txt").write_text("late")
    reset = Job.objects.get(id=job.id)
    reset.state = "READY"
    reset.save()
    assert TransferItem.objects.get(job_id=job.id, direction="in").state == "pending"
    cycle_until(service, job.id, "STAGED_IN")
    assert (site.layout.data / "t" / "input" / "deck.txt").read_text() == "late"
    advance(Job.objects.get(id=job.id), "PREPROCESSED", "RUNNING", "RUN_DONE", "POSTPROCESSED")
    cycle_until(service, job.id, "FAILED")  # the run wrote no run.log
    (site.layout.data / "t" / "run.log").write_text("second run")
    advance(Job.objects.get(id=job.id), "RESTART_READY", "RUNNING", "RUN_DONE", "POSTPROCESSED")
    assert TransferItem.objects.get(job_id=job.id, direction="out").state == "pending"
    cycle_until(service, job.id, "JOB_FINISHED")
    assert (remote / "out" / "run.log").read_text() == "second run"
