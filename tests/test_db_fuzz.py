"""Random and hostile values through every write path (the API, CLI job files, launchers' status updates): each
is stored or refused with one clear error (a BalsamError of one line, or a one-line CLI error), never another
exception, and the store stays consistent (``balsam db check`` finds nothing)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List

import pytest

pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis (in the dev extra)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from balsam.api import Job
from balsam.db import sessions
from balsam.db.jobs import StateChange
from balsam.db.maintenance import check
from balsam.db.updater import StatusUpdater, store_sink
from balsam.exceptions import BalsamError
from tests.cli_helpers import invoke
from tests.launcher_support import runnable

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

hostile_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "../..", "/etc/passwd", "a\nb", "a\x00b", "\x1b[31m", "x" * 5000, "é/ü", "C:\\x", ".", "a/../../b",
                     "$(touch pwned)", "`id`", "'\"", "__pickle__", "🎉" * 100, "\u202e", "a//b/", "~root"]),
)
numbers = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 2, -1, 10**6, 10**6 + 1, 2**63, float("1e309"), math.nan, True, False, "2", None]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, hostile_text, st.binary(max_size=10))
marker = st.builds(lambda v: {"__pickle__": v}, st.one_of(hostile_text, st.just("gASVCAAAAAAAAACMBHRlc3SULg==")))
values = st.recursive(st.one_of(scalars, marker), lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=8)
any_value = st.one_of(values, st.dictionaries(hostile_text, values, max_size=4), st.lists(values, max_size=3), st.just(object()))


def _one_line(exc: BaseException) -> None:
    assert isinstance(exc, BalsamError), f"{type(exc).__name__}: {exc}"
    assert "\n" not in str(exc), f"not one line: {exc!s:.300}"


def _consistent(site: Any) -> None:
    assert check(site.store.conn) == [], "balsam db check found problems"


@FUZZ
@given(workdir=hostile_text, params=st.one_of(any_value, st.dictionaries(st.sampled_from(["say_hello_to", "x", ""]), values, max_size=3)),
       fields=st.dictionaries(st.sampled_from(["num_nodes", "ranks_per_node", "threads_per_rank", "threads_per_core", "gpus_per_rank",
                                                "node_packing_count", "wall_time_min", "tags", "data", "launch_params", "parent_ids",
                                                "pending_file_cleanup"]), any_value, max_size=4))
def test_api_creation_and_update(site: Any, hello: Any, workdir: Any, params: Any, fields: Dict[str, Any]) -> None:
    try:
        Job(workdir, app_id="Hello", parameters=params, **fields).save()
    except BalsamError as exc:
        _one_line(exc)
    except TypeError as exc:  # a Python API signature mismatch (unexpected keyword), not a store door
        assert "argument" in str(exc)
    job = Job.objects.filter(workdir="fixed").first() or hello.submit("fixed", say_hello_to="x")
    for name, value in fields.items():
        try:
            Job.objects.filter(id=job.id).update(**{name: value})
        except BalsamError as exc:
            _one_line(exc)
    try:
        Job.objects.filter(id=job.id).update(parameters=params)
    except BalsamError as exc:
        _one_line(exc)
    _consistent(site)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**25), max_value=10**25), st.floats(), hostile_text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(hostile_text, inner, max_size=3)), max_leaves=8)
records = st.dictionaries(
    st.sampled_from(["workdir", "app", "parameters", "tags", "num_nodes", "gpus_per_rank", "wall_time_min", "data", "launch_params",
                     "parent_ids", "node_packing_count", "param.say_hello_to", "bogus"]), json_values, max_size=6)


@FUZZ
@given(rows=st.lists(records, min_size=1, max_size=3))
def test_cli_job_files(site: Any, hello: Any, tmp_path: Path, rows: List[Dict[str, Any]]) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(json.dumps(dict({"app": "Hello"}, **r)) for r in rows) + "\n")
    result = invoke("job", "create", "--from", path, "-y")
    if result.exit_code != 0:
        err = result.stderr.strip()
        assert result.exit_code in (1, 2) and err.startswith("Error: ") and "\n" not in err and "Traceback" not in err, err
    _consistent(site)


change_fields = st.dictionaries(
    st.sampled_from(["return_code", "serialized_return_value", "serialized_exception", "workdir", "tags", "num_nodes"]),
    st.one_of(numbers, st.binary(max_size=20), hostile_text, st.none()), max_size=3)


@FUZZ
@given(changes=st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["RUNNING", "RUN_DONE", "RUN_ERROR", "RUN_TIMEOUT", "FAILED",
                                                                      "bogus", "CREATED", "JOB_FINISHED"]),
                                  st.one_of(st.none(), st.dictionaries(st.text(max_size=5), values, max_size=3)), change_fields,
                                  st.booleans()), min_size=1, max_size=12))
def test_launcher_status_updates(site: Any, hello: Any, changes: List[Any]) -> None:
    jobs = [hello.submit(f"u{len(Job.objects.all())}-{i}", say_hello_to="x") for i in range(3)]
    runnable(site.store, jobs)
    with site.store.write() as conn:
        sid = sessions.create_session(conn, host="h", pid=None)
        sessions.acquire(conn, sid)
    ids = [int(j.id) for j in jobs] + [10**9]
    updater = StatusUpdater(store_sink(site.store), retry_period_s=0.01)
    for index, state, data, fields, with_lease in changes:
        updater.put(ids[index], state, data=data, fields=fields or None, session_id=sid if with_lease else None)
    assert updater.flush(timeout=30), "every change is written or refused: nothing blocks the queue"
    assert updater.written_total + updater.rejected_total >= len(changes)
    _consistent(site)
    with site.store.write() as conn:
        sessions.release(conn, sid)


def test_the_fuzzers_reach_the_store(site: Any, hello: Any) -> None:
    """The generators produce values the doors accept too (the tests above would pass vacuously otherwise)."""
    job = Job("ok/1", app_id="Hello", parameters={"say_hello_to": "é $(x) 'y'"}, tags={"k": "v"}, gpus_per_rank=0.5)
    job.save()
    assert Job.objects.get(id=job.id).parameters == {"say_hello_to": "é $(x) 'y'"}
    with pytest.raises(BalsamError):
        Job("ok/2", app_id="Hello", parameters={"say_hello_to": {"__pickle__": "x"}}).save()
    runnable(site.store, [job])
    with site.store.write() as conn:
        sid = sessions.create_session(conn, host="h", pid=None)
        sessions.acquire(conn, sid)
    updater = StatusUpdater(store_sink(site.store))
    updater.put(int(job.id), "RUNNING", session_id=sid)
    updater.put(int(job.id), "RUN_DONE", fields={"return_code": 0}, session_id=sid)
    assert updater.close(timeout=10) and Job.objects.get(id=job.id).state == "RUN_DONE"
    assert StateChange(1, "RUNNING").state == "RUNNING"


@settings(max_examples=400, deadline=None)
@given(workdir=hostile_text, app_id=st.one_of(st.integers(min_value=-5, max_value=2**64), st.text(max_size=3), st.none()),
       tags=st.one_of(st.none(), st.dictionaries(st.one_of(hostile_text, st.integers()), st.one_of(hostile_text, numbers),
                                                 max_size=3), st.lists(hostile_text, max_size=2)),
       params=st.one_of(st.none(), st.dictionaries(st.one_of(hostile_text, st.integers()), values, max_size=3), hostile_text,
                        st.dictionaries(st.sampled_from(["say_hello_to", "x"]), st.one_of(hostile_text, numbers), max_size=2)),
       extra=st.dictionaries(st.sampled_from(["num_nodes", "data", "nodes", "parent_ids"]), values, max_size=1))
def test_the_quick_check_of_common_jobs_agrees_with_the_full_one(workdir: Any, app_id: Any, tags: Any, params: Any,
                                                                  extra: Dict[str, Any]) -> None:
    """The agent checks a job-create object of the common shape (workdir, app id, tags, parameters) with a few cheap
    tests (balsam.db.creation.plain_job_row), the others with the full field checks (new_job_row): for any object,
    the quick check gives exactly the full check's row, or leaves the object to it; it never passes one the full
    check refuses."""
    from balsam.db.jobs import new_job_row, plain_job_row
    from balsam.exceptions import ValidationError

    item = {"workdir": workdir, "app_id": app_id, "tags": tags, "parameters": params, **extra}
    quick = plain_job_row(item)
    try:
        full: Any = new_job_row(workdir, app_id if isinstance(app_id, int) else 0, tags=tags, parameters=params, **extra)
    except (ValidationError, TypeError) as e:
        full = e
    if quick is not None:
        assert not extra and isinstance(app_id, int) and 0 <= app_id < 2**63
        assert quick == full, (item, quick, full)
