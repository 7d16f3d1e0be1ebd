"""The Job API and lazy queries, against Balsam 0.7's documented semantics."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from balsam.api import ApplicationDefinition, EventLog, Job
from balsam.exceptions import ValidationError
from tests.helpers import advance, finish_run

BACKENDS = ("local", "http")
"""Every test here runs on the home host and from another host through the agent's HTTP API."""


def test_the_issue_example_runs_offline(hello: Any) -> None:
    jobs = [hello.submit(workdir=f"demo/{i}", say_hello_to=f"n{i}", save=False, tags={"experiment": "xyz"}) for i in range(1000)]
    jobs = Job.objects.bulk_create(jobs)
    Job.objects.filter(id=[j.id for j in jobs[:20]]).update(state="PREPROCESSED")
    top = Job.objects.filter(tags={"experiment": "xyz"}, state="PREPROCESSED").order_by("-id")[:10]
    assert [j.id for j in top] == [jobs[i].id for i in range(19, 9, -1)]
    assert Job.objects.filter(state__ne="JOB_FINISHED").count() == 1000
    assert [e.to_state for e in EventLog.objects.filter(job_id=jobs[0].id)] == ["PREPROCESSED", "STAGED_IN"]


def test_bulk_create_updates_inputs_in_place(hello: Any) -> None:
    jobs = [hello.submit(workdir=f"d/{i}", say_hello_to="x", save=False) for i in range(3)]
    out = Job.objects.bulk_create(jobs)
    assert out[0] is jobs[0] and all(j.id for j in jobs)
    assert jobs[0].state == "STAGED_IN" and jobs[0].created is not None
    assert isinstance(jobs[0].last_update, dt.datetime) and jobs[0].last_update.tzinfo is not None


def test_create_by_app_name_and_id_and_class(hello: Any) -> None:
    a = Job("a", app_id="Hello", parameters={"say_hello_to": "x"})
    a.save()
    b = Job.objects.create(workdir="b", app_id=hello.__app_id__, parameters={"say_hello_to": "y"})
    c = Job(workdir="c", app_id=hello, parameters={"say_hello_to": "z"}, tags={"k": "v"})
    c.save()
    assert {a.app_id, b.app_id, c.app_id} == {hello.__app_id__}
    assert Job.objects.get(workdir="c").tags == {"k": "v"}


def test_unknown_and_missing_parameters(hello: Any, adder: Any) -> None:
    with pytest.raises(ValidationError, match="needs parameter 'say_hello_to'"):
        hello.submit(workdir="a")
    with pytest.raises(ValidationError, match=r"no parameter 'bogus' \(parameters: say_hello_to\)"):
        hello.submit(workdir="a", say_hello_to="x", bogus=1)
    with pytest.raises(ValidationError, match="no app 'Nope'"):
        Job("a", app_id="Nope")
    assert Job.objects.count() == 0


def test_a_misspelt_parameter_is_named_with_the_one_it_resembles(site: Any, hello: Any, adder: Any, backend: str) -> None:
    """Balsam said only that the real name was missing; the typo is what the user needs to see, by every door."""
    from balsam.db import jobs as job_db

    with pytest.raises(ValidationError, match=r"app Hello has no parameter 'say_hello_too' \(Did you mean 'say_hello_to'\?\)"):
        hello.submit(workdir="a", say_hello_too="x")
    with pytest.raises(ValidationError, match=r"app Adder has no parameter 'xx' \(Did you mean 'x'\?\)"):
        Job.objects.bulk_create([Job("b", app_id="Adder", parameters={"x": 1}), Job("c", app_id="Adder", parameters={"xx": 1})])
    if backend != "http":  # the store's own writer (job files, the agent's API) says the same
        with pytest.raises(ValidationError, match="Did you mean 'say_hello_to'"):
            with site.store.write() as conn:
                job_db.insert_jobs(conn, [job_db.new_job_row("d", int(hello.__app_id__), parameters={"say_helo_to": "x"})])
    assert Job.objects.count() == 0


def test_data_tags_and_parameters_round_trip_and_in_place_changes_are_saved(adder: Any, backend: str) -> None:
    # A tuple comes back a tuple (pickled), not a list; from another host too, as the site's owner sends it.
    job = adder.submit(workdir="a", x=(1, 2), tags={"exp": "1"}, data={"a": [1, {"b": 2}]})
    assert Job.objects.get(id=job.id).parameters == {"x": (1, 2)}
    fresh = Job.objects.get(id=job.id)
    assert fresh.data == {"a": [1, {"b": 2}]}
    fresh.data["a"].append(3)
    fresh.tags["exp"] = "2"
    fresh.save()
    again = Job.objects.get(id=job.id)
    assert again.data == {"a": [1, {"b": 2}, 3]}
    assert Job.objects.filter(tags={"exp": "2"}).count() == 1
    assert Job.objects.filter(tags={"exp": "1"}).count() == 0


def test_filters(hello: Any) -> None:
    a = hello.submit(workdir="runs/a", say_hello_to="x", tags={"exp": "1", "size": "big"})
    b = hello.submit(workdir="runs/b", say_hello_to="x", tags={"exp": "1"}, parent_ids=[a.id])
    c = hello.submit(workdir="other/c", say_hello_to="x", tags={"exp": "2"})
    advance(a, "PREPROCESSED")

    def ids(**kw: Any) -> list:
        return sorted(j.id for j in Job.objects.filter(**kw))

    assert ids(id=[a.id, c.id]) == sorted([a.id, c.id])
    assert ids(id=[]) == []
    assert ids(tags={"exp": "1"}) == [a.id, b.id]
    assert ids(tags=["exp:1", "size:big"]) == [a.id]
    assert ids(tags="size") == [a.id]
    assert ids(state="PREPROCESSED") == [a.id]
    assert ids(state=["AWAITING_PARENTS", "STAGED_IN"]) == [b.id, c.id]
    assert ids(state__ne="PREPROCESSED") == [b.id, c.id]
    assert ids(workdir__contains="runs/") == [a.id, b.id]
    assert ids(parent_id=[a.id]) == [b.id]
    assert ids(app_id=hello.__app_id__) == [a.id, b.id, c.id]
    assert ids(last_update_after=dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)) == [a.id, b.id, c.id]
    assert ids(last_update_before=dt.datetime(2000, 1, 1)) == []
    assert Job.objects.filter(tags={"exp": "1"}).filter(tags={"size": "big"}).count() == 1
    assert [j.id for j in a.parent_query()] == [] and [j.id for j in b.parent_query()] == [a.id]
    with pytest.raises(ValidationError, match="unknown filter 'stat'"):
        Job.objects.filter(stat="RUNNING")
    with pytest.raises(ValidationError, match="unknown job state 'RUNNIN'"):
        list(Job.objects.filter(state="RUNNIN"))


def test_order_slicing_get_first(hello: Any) -> None:
    jobs = Job.objects.bulk_create([hello.submit(workdir=f"w{i:02d}", say_hello_to="x", save=False) for i in range(12)])
    q = Job.objects.all().order_by("-workdir")
    assert [j.workdir for j in q[:3]] == ["w11", "w10", "w09"]
    assert [j.workdir for j in q[2:4]] == ["w09", "w08"]
    assert q[0].workdir == "w11" and len(q) == 12 and bool(q)
    assert q[2:8][1:3].count() == 2
    with pytest.raises(ValidationError, match="negative"):
        q[-1]
    with pytest.raises(ValidationError, match="after slicing"):
        q[:3].filter(state="RUNNING")
    with pytest.raises(ValidationError, match="cannot order Job by 'bogus'"):
        Job.objects.order_by("bogus")
    assert Job.objects.first().id == jobs[0].id  # type: ignore[union-attr]
    with pytest.raises(Job.DoesNotExist, match="no Job matches workdir='nope'"):
        Job.objects.get(workdir="nope")
    with pytest.raises(Job.MultipleObjectsReturned):
        Job.objects.get(state="STAGED_IN")
    assert not Job.objects.filter(workdir="nope")


def test_query_update_and_delete(hello: Any) -> None:
    Job.objects.bulk_create([hello.submit(workdir=f"w{i}", say_hello_to="x", save=False, tags={"g": str(i % 2)}) for i in range(6)])
    assert Job.objects.filter(tags={"g": "0"}).update(state="PREPROCESSED", data={"marked": True}) == 3
    assert Job.objects.filter(state="PREPROCESSED").count() == 3
    assert all(j.data == {"marked": True} for j in Job.objects.filter(state="PREPROCESSED"))
    assert Job.objects.filter(tags={"g": "1"}).delete() == 3
    assert Job.objects.count() == 3


def test_bulk_update_writes_only_changes(hello: Any) -> None:
    jobs = Job.objects.bulk_create([hello.submit(workdir=f"w{i}", say_hello_to="x", save=False) for i in range(3)])
    for j in jobs:
        j.num_nodes = 2
        j.state = "PREPROCESSED"
    Job.objects.bulk_update(jobs)
    assert {(j.num_nodes, str(j.state)) for j in Job.objects.all()} == {(2, "PREPROCESSED")}
    assert all(j.version == 3 for j in jobs)


def test_bad_values_are_refused(hello: Any) -> None:
    for kwargs, message in [
        ({"num_nodes": 0}, "num_nodes must be an integer from 1 to"),
        ({"gpus_per_rank": -1}, "gpus_per_rank must be a number from 0 to"),
        ({"tags": {"a": ["list"]}}, "tags must map"),
        ({"workdir": "../escape"}, "leaves the site's data/ folder"),
    ]:
        kwargs = dict({"workdir": "w"}, **kwargs)
        with pytest.raises(ValidationError, match=message):
            hello.submit(say_hello_to="x", **kwargs)
    assert Job.objects.count() == 0


class _Fails(ApplicationDefinition):
    site = "test-site"

    def run(self, x: Any) -> Any:
        return x


def _finish_from_thread(job_id: int, value: Any = None, exc: Any = None, delay: float = 0.2) -> None:
    import threading

    from balsam.db.codec import pickle_value

    def go() -> None:
        time.sleep(delay)
        job = Job.objects.get(id=job_id)
        advance(job, "PREPROCESSED", "RUNNING")
        if exc is not None:
            finish_run(job, "RUN_ERROR", return_code=1,
                       serialized_exception=pickle_value((exc, "Traceback (most recent call last):\n  remote\nTypeError: bad")))
            advance(job, "FAILED")
        else:
            finish_run(job, "RUN_DONE", return_code=0, serialized_return_value=pickle_value(value))
            advance(job, "POSTPROCESSED")

    threading.Thread(target=go, daemon=True).start()


def test_result_as_completed_and_wait(adder: Any) -> None:
    import concurrent.futures

    jobs = [adder.submit(workdir=f"a{i}", x=i) for i in range(3)]
    for k, job in enumerate(jobs):
        _finish_from_thread(job.id, value=job.parameters["x"] + 2, delay=0.1 * (3 - k))
    assert sorted(j.result() for j in Job.objects.as_completed(jobs, timeout=10)) == [2, 3, 4]
    done, not_done = Job.objects.wait(jobs, timeout=1)
    assert len(done) == 3 and not not_done
    slow = adder.submit(workdir="slow", x=1)
    with pytest.raises(concurrent.futures.TimeoutError):
        slow.result(timeout=0.2)
    with pytest.raises(Job.NoResult):
        slow.result_nowait()
    assert not slow.done()


def test_result_reraises_the_remote_exception(site: Any, backend: str) -> None:
    job = _Fails.submit(workdir="f", x=[3, "hello"] if backend == "http" else (3, "hello"))  # pickled values: home host only
    _finish_from_thread(job.id, exc=TypeError("bad operand"))
    with pytest.raises(TypeError, match="bad operand") as info:
        job.result(timeout=10)
    assert "remote" in str(info.value.__cause__)


def test_result_of_a_failed_shell_job_says_why(hello: Any) -> None:
    job = hello.submit(workdir="s", say_hello_to="x")
    advance(job, "PREPROCESSED", "RUNNING")
    job.state = "RUN_ERROR"
    job.state_data = {"error": "command not found"}
    job.save()
    advance(job, "FAILED")
    from balsam.api import JobFailed

    with pytest.raises(JobFailed, match="FAILED: command not found"):
        job.result(timeout=5)


def test_repr_is_readable(hello: Any) -> None:
    job = hello.submit(workdir="r", say_hello_to="x", tags={"a": "b"})
    assert repr(job) == f"Job(id={job.id}, workdir='r', state='STAGED_IN', tags={{'a': 'b'}})"


def test_tag_and_state_queries_agree_whichever_side_drives(hello: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from balsam.db import query

    jobs = Job.objects.bulk_create([hello.submit(workdir=f"w{i}", say_hello_to="x", save=False,
                                                 tags={"exp": "big", "run": str(i % 7)}) for i in range(300)])
    Job.objects.filter(id=[j.id for j in jobs[::3]]).update(state="PREPROCESSED")
    expected = sorted(j.id for j in jobs[::3] if j.tags["run"] == "2")
    for limit in (10_000, 1):  # a large probe lets the tags drive (join plan); a tiny one lets the states drive
        monkeypatch.setattr(query, "PROBE_LIMIT", limit)
        q = Job.objects.filter(tags={"exp": "big", "run": "2"}, state="PREPROCESSED")
        assert q.count() == len(expected)
        assert [j.id for j in q.order_by("id")] == expected
        assert [j.id for j in Job.objects.filter(tags={"run": "2"}, state=["PREPROCESSED", "RUNNING"]).order_by("-id")[:3]] == expected[::-1][:3]
        assert Job.objects.filter(tags={"exp": "big"}, state__ne="PREPROCESSED").count() == 200


def test_jobs_of_every_shape_are_stored_alike_in_one_request_or_in_parts(site: Any, hello: Any, adder: Any,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """What bulk_create stores for each kind of field: from another host the agent takes a job of the common shape
    (workdir, app, tags, parameters) by a quicker check than the others, and more than CREATE_CHUNK jobs go in
    staged parts; the rows must come out as the home host writes them, whichever way each job went."""
    import json

    import balsam.http.client as client

    def shapes(prefix: str) -> Any:
        return [
            Job(f"{prefix}/plain", app_id="Hello", parameters={"say_hello_to": "x"}, tags={"exp": "a"}),
            Job(f"{prefix}/./dotted//dir/", app_id="Hello", parameters={"say_hello_to": "y"}),
            Job(f"{prefix}/données é", app_id="Hello", parameters={"say_hello_to": "ünï"}, tags={"clé": "vàl", "n": 5}),
            Job(f"{prefix}/resources", app_id="Hello", parameters={"say_hello_to": "z"}, num_nodes=2, ranks_per_node=4,
                gpus_per_rank=0.5, node_packing_count=3, wall_time_min=30, threads_per_rank=2, threads_per_core=2),
            Job(f"{prefix}/data", app_id="Adder", parameters={"x": [1, 2.5, None, {"k": "v"}], "y": 10**17},
                data={"nested": {"a": [True, False]}}, launch_params={"cpu-bind": "depth"}, pending_file_cleanup=False),
            Job(f"{prefix}/defaults-given", app_id="Adder", parameters={"x": 1}, num_nodes=1, gpus_per_rank=0, tags={}),
        ]

    columns = ("workdir", "tags", "parameters", "data", "num_nodes", "ranks_per_node", "threads_per_rank", "threads_per_core",
               "gpus_per_rank", "node_packing_count", "launch_params", "wall_time_min", "parent_ids", "pending_file_cleanup", "state")
    one = Job.objects.bulk_create(shapes("one"))
    monkeypatch.setattr(client, "CREATE_CHUNK", 4)  # from another host: two staged parts, then one commit
    parted = Job.objects.bulk_create(shapes("parts"))
    child = Job.objects.create(workdir="parts/child", app_id="Hello", parameters={"say_hello_to": "c"}, parent_ids=[one[0].id])
    with site.store.read() as conn:
        rows = {r[0]: r for r in conn.execute(f"SELECT id, {', '.join(columns)} FROM job")}
    for a, b in zip(one, parted):
        ra, rb = rows[a.id], rows[b.id]
        assert (a.workdir, b.workdir) == (ra[1], rb[1]) and ra[1].startswith("one/") and rb[1] == "parts/" + ra[1][4:]
        assert ra[2:] == rb[2:], (ra, rb)
    assert [rows[j.id][1] for j in one[:3]] == ["one/plain", "one/dotted/dir", "one/données é"]
    assert json.loads(rows[one[2].id][2]) == {"clé": "vàl", "n": "5"}  # a number tag is stored as its text
    assert rows[one[3].id][5:12] == (2, 4, 2, 2, 0.5, 3, "{}") and rows[one[3].id][12] == 30
    assert json.loads(rows[one[4].id][3]) == {"x": [1, 2.5, None, {"k": "v"}], "y": 10**17}
    assert json.loads(rows[one[4].id][4]) == {"nested": {"a": [True, False]}} and rows[one[4].id][14] == 0
    assert rows[one[5].id][2:] == (*rows[one[5].id][2:3], '{"x":1}', "{}", 1, 1, 1, 1, 0, 1, "{}", 0, "[]", 1, "STAGED_IN")
    assert (json.loads(rows[child.id][13]), child.state) == ([one[0].id], "AWAITING_PARENTS")
    assert Job.objects.get(id=parted[4].id).parameters == {"x": [1, 2.5, None, {"k": "v"}], "y": 10**17}


def test_a_listing_gives_the_home_hosts_rows_value_for_value(site: Any, hello: Any, adder: Any) -> None:
    """Every column of every job, read through the backend (from another host: pages of stored values, which the
    client takes as they are) is exactly what the home host reads from SQLite: times to the last digit, JSON text,
    flags, results and pickled parameters as bytes; an unknown answer form is refused by name."""
    from fractions import Fraction

    from balsam._api import sites as _sites
    from balsam.db.backend import LocalBackend
    from balsam.db.codec import pickle_value
    from balsam.http.schemas import COLUMNS

    jobs = Job.objects.bulk_create([hello.submit(workdir=f"l/{i}", say_hello_to=f"é{i}", save=False, tags={"k": str(i)}) for i in range(7)])
    odd = adder.submit(workdir="l/odd", x=Fraction(1, 3), save=False)
    if _sites.resolve("test-site").backend.kind == "local":
        odd.save()  # pickled parameters: made on the home host (another host may not send them)
    else:
        LocalBackend(site.store).create_jobs([odd._creation_row()], {})
    advance(jobs[0], "PREPROCESSED", "RUNNING")
    finish_run(jobs[0], "RUN_DONE", return_code=0, serialized_return_value=pickle_value({"answer": 42}))
    backend = _sites.resolve("test-site").backend
    columns = COLUMNS["job"]
    home = LocalBackend(site.store).select("job", {}, columns=columns, order_by=["id"])
    assert len(home) == 8 and any(r[columns.index("parameters_pickled")] for r in home)
    assert any(r[columns.index("serialized_return_value")] for r in home)
    assert backend.select("job", {}, columns=columns, order_by=["id"]) == home
    assert backend.select("job", {"tags": {"k": "3"}}, columns=("workdir", "created", "id")) == [
        (r[1], r[columns.index("created")], r[0]) for r in home if r[1] == "l/3"]
    if backend.kind == "http":
        assert list(backend.iterate("job", {}, columns=("workdir", "id"), order_by=["id"], page_rows=3)) == [(r[1], r[0]) for r in home]
        with pytest.raises(ValidationError, match="form: 'objects'.*or 'rows'.*got 'csv'"):
            backend.client.request("POST", "/v1/jobs/query", {"page": True, "form": "csv"}, idempotency_key="")
