"""One validating writer per job field (balsam.db.fields), used by every door: the API, the CLI and its job
files, and launchers' status updates, which may write only return_code, results and state data (defects 3, 8)."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any

import pytest

from balsam.api import Job
from balsam.db import sessions
from balsam.db.jobs import StateChange, apply_state_changes
from balsam.db.maintenance import check
from balsam.exceptions import ValidationError
from tests.cli_helpers import fails, ok
from tests.launcher_support import runnable


def _running(site: Any, hello: Any, workdir: str = "a") -> "tuple[int, int]":
    job = hello.submit(workdir, say_hello_to="x")
    runnable(site.store, [job])
    with site.store.write() as conn:
        sid = sessions.create_session(conn, host="h", pid=None)
        sessions.acquire(conn, sid)
        apply_state_changes(conn, [StateChange(int(job.id), "RUNNING", session_id=sid)])
    return int(job.id), sid


@pytest.mark.parametrize("fields", [
    {"workdir": "../../../etc"},
    {"tags": {"stage": "new"}},
    {"node_packing_count": 0},
    {"parameters": {"say_hello_to": "y"}},
    {"num_nodes": 4},
])
def test_a_launcher_writes_nothing_but_its_results(site: Any, hello: Any, fields: Any) -> None:
    job_id, sid = _running(site, hello)
    with site.store.write() as conn:
        result = apply_state_changes(conn, [StateChange(job_id, "RUN_DONE", fields=fields, session_id=sid)], strict=False)
    assert result.applied == 0 and "cannot be written" in result.rejected[0][1]
    row = site.store.execute("SELECT state, workdir, node_packing_count, tags FROM job WHERE id=?", (job_id,))[0]
    assert row == ("RUNNING", "a", 1, "{}")
    with site.store.write() as conn:
        with pytest.raises(ValidationError, match="cannot be written"):
            apply_state_changes(conn, [StateChange(job_id, "RUN_DONE", fields=fields, session_id=sid)])
    assert not check(site.store.conn)


def test_results_need_the_lease_and_are_bounded(site: Any, hello: Any) -> None:
    job_id, sid = _running(site, hello)
    with site.store.write() as conn:
        no_lease = apply_state_changes(conn, [StateChange(job_id, "RUN_DONE", fields={"return_code": 0})], strict=False)
        bad_rc = apply_state_changes(conn, [StateChange(job_id, "RUN_DONE", fields={"return_code": 10**20}, session_id=sid)],
                                     strict=False)
        ok_ = apply_state_changes(conn, [StateChange(job_id, "RUN_DONE", session_id=sid, fields={
            "return_code": 0, "serialized_return_value": pickle.dumps(42)})], strict=False)
    assert "holding" in no_lease.rejected[0][1]
    assert "return_code" in bad_rc.rejected[0][1]
    assert ok_.applied >= 1 and not ok_.rejected
    assert Job.objects.get(id=job_id).return_code == 0


def test_the_api_cannot_write_results_or_return_codes(site: Any, adder: Any) -> None:
    job = adder.submit("a", x=1)
    job.serialized_return_value = pickle.dumps(1)
    with pytest.raises(ValidationError, match="serialized_return_value"):
        job.save()
    with pytest.raises(ValidationError, match="return_code"):
        Job.objects.filter(id=job.id).update(return_code=3)


def test_tag_changes_keep_the_tag_index(site: Any, hello: Any) -> None:
    job = hello.submit("a", say_hello_to="x", tags={"stage": "old"})
    job.tags = {"stage": "new"}
    job.save()
    assert [j.id for j in Job.objects.filter(tags={"stage": "new"})] == [job.id]
    assert not check(site.store.conn)


BAD_NUMBERS = [
    ("gpus_per_rank", math.inf), ("gpus_per_rank", math.nan), ("gpus_per_rank", float("1e309")), ("gpus_per_rank", -1),
    ("num_nodes", 10**20), ("num_nodes", 0), ("ranks_per_node", 2.0), ("node_packing_count", True),
    ("wall_time_min", -1), ("wall_time_min", 10**19), ("threads_per_core", "2"),
]


@pytest.mark.parametrize("name,value", BAD_NUMBERS)
def test_numbers_out_of_range_are_refused_by_the_api(site: Any, hello: Any, name: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=name) as info:
        hello.submit("a", say_hello_to="x", **{name: value})
    assert "\n" not in str(info.value)
    job = hello.submit("b", say_hello_to="x")
    if value is not True:  # True == 1: an unchanged field, nothing to write
        setattr(job, name, value)
        with pytest.raises(ValidationError, match=name):
            job.save()
    with pytest.raises(ValidationError, match=name):
        Job.objects.filter(id=job.id).update(**{name: value})
    assert Job.objects.count() == 1 and not check(site.store.conn)


@pytest.mark.parametrize("args", [["-g", "inf"], ["-g", "nan"], ["-g", "1e309"], ["-n", str(10**20)], ["-t", str(10**19)]])
def test_numbers_out_of_range_are_refused_by_the_cli(site: Any, hello: Any, args: Any) -> None:
    err = fails("job", "create", "-w", "a", "-a", "Hello", "-p", "say_hello_to=x", "-y", *args, code=2)
    assert "must be" in err
    assert Job.objects.count() == 0


def test_numbers_out_of_range_are_refused_in_job_files(site: Any, hello: Any, tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"workdir": "a", "app": "Hello", "parameters": {"say_hello_to": "x"}, "gpus_per_rank": 1e309}\n')
    assert "gpus_per_rank" in fails("job", "create", "--from", path, "-y", code=2)
    path.write_text(json.dumps({"workdir": "a", "app": "Hello", "parameters": {"say_hello_to": "x"}, "num_nodes": 10**20}) + "\n")
    assert "num_nodes" in fails("job", "create", "--from", path, "-y", code=2)
    assert Job.objects.count() == 0


@pytest.mark.parametrize("workdir", ["x" * 5000, "a\nb", "a\tb", "a\x00b", "a\x1b[31mb"], ids=["long", "newline", "tab", "nul", "escape"])
def test_bad_workdirs_are_refused_at_the_door(site: Any, hello: Any, workdir: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="workdir") as info:
        hello.submit(workdir, say_hello_to="x")
    assert "\n" not in str(info.value)
    assert "workdir" in fails("job", "create", "-w", workdir.replace("\x00", "\x01"), "-a", "Hello", "-p", "say_hello_to=x", "-y", code=2)


def test_good_values_still_pass(site: Any, hello: Any) -> None:
    job = hello.submit("a/b", say_hello_to="x", num_nodes=2, gpus_per_rank=0.5, wall_time_min=30, node_packing_count=4,
                       tags={"k": 1})
    assert (job.num_nodes, job.gpus_per_rank, job.tags) == (2, 0.5, {"k": "1"})
    ok("job", "create", "-w", "c", "-a", "Hello", "-p", "say_hello_to=x", "-g", "1.5", "-n", "3", "-y")
    with site.store.write() as conn:
        sid = sessions.create_session(conn, host="h", pid=None)
        runnable(site.store, Job.objects.all())
        assert len(sessions.acquire(conn, sid, max_aggregate_nodes=10)) == 2
