"""Hostile values in the Python API, as a script or a notebook passes them: filters and fields of the wrong type,
NaN, integers past 64 bits, nested dicts in tags, text that is not Unicode. Each is one ValidationError (a Balsam
error, and a ValueError) with the same message on the site's home host and from another host through the agent.

Before, the home host raised TypeError, ValueError, AttributeError, OverflowError or sqlite3 errors from deep
inside, or quietly matched everything; another host got other messages, a JSONDecodeError from the client, or a
503 "is the agent running?" that said nothing about the value. Every test runs on both backends.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List

import pytest

from balsam.api import BatchJob, EventLog, Job, add_dependency
from balsam.exceptions import BalsamError, ValidationError

BACKENDS = ("local", "http")
NAN = float("nan")


def _refused(call: Callable[[], Any]) -> str:
    with pytest.raises(ValidationError) as excinfo:
        call()
    message = str(excinfo.value)
    assert isinstance(excinfo.value, BalsamError) and "\n" not in message
    return message


def _job(hello: Any, workdir: str = "w/1", **kwargs: Any) -> Job:
    job = Job(workdir, hello, parameters={"say_hello_to": "x"}, **kwargs)
    job.save()
    return job


@pytest.mark.parametrize("model, filters, message", [
    (Job, {"state": 5}, "unknown job state 5 (valid: "),
    (Job, {"state": None}, "unknown job state None (valid: "),
    (Job, {"return_code": "abc"}, "return_code: expected an integer, got 'abc'"),
    (Job, {"return_code": NAN}, "return_code: expected an integer, got nan"),
    (Job, {"session_id": [1, "x"]}, "session_id: expected an integer, got [1, 'x']"),
    (Job, {"id": True}, "id: expected an integer id, got True"),
    (Job, {"return_code": [10**30]}, "return_code: expected an integer, got [100000"),
    (Job, {"return_code": 10**30}, "return_code: 1000000000000000000000000000000 is out of range (at most 64-bit integers)"),
    (Job, {"pending_file_cleanup": "abc"}, "pending_file_cleanup: expected true or false, got 'abc'"),
    (Job, {"workdir": None}, "workdir: expected text, got None"),
    (Job, {"workdir__contains": 1.5}, "workdir__contains: expected text, got 1.5"),
    (Job, {"last_update_after": NAN}, "last_update_after: expected a datetime, epoch seconds or ISO 8601 text, got nan"),
    (Job, {"created_before": 10**400}, "created_before: expected a datetime, epoch seconds or ISO 8601 text, got 1000000"),
    (Job, {"tags": {"k": {"nested": 1}}}, "tags: the value of 'k' must be text or a number, got {'nested': 1}"),
    (Job, {"tags": 5}, "tags: expected 'key:value' strings or a dict, got 5"),
    (Job, {"tags": {"k": "\udcff"}}, "tags: '\\udcff' is not valid Unicode text"),
    (Job, {"parameters": {"a\x00b": 1}}, "parameters: the key 'a\\x00b' has a NUL character, which no stored key can have"),
    (Job, {"parameters": {"n": NAN}}, "parameters: the value of 'n' is not JSON (float), so no stored parameters equals it"),
    (Job, {"site_id": "abc"}, "site_id: expected a site id, got 'abc'"),
    (EventLog, {"batch_job_id": None}, "batch_job_id: expected an integer, got None"),
    (EventLog, {"scheduler_id": "x"}, "scheduler_id: expected an integer, got 'x'"),
    (EventLog, {"data": [1]}, "data: expected 'key:value' strings or a dict, got 1"),
    (BatchJob, {"filter_tags": None}, "filter_tags: expected 'key:value' strings or a dict, got None"),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_a_bad_filter_is_the_same_validation_error_on_every_host(site: Any, hello: Any, model: Any, filters: Dict[str, Any],
                                                                   message: str) -> None:
    _job(hello, tags={"k": "v"})
    said = _refused(lambda: list(model.objects.filter(**filters)))
    assert said.startswith(message), said
    assert _job(hello, "w/2").id is not None  # the site is as usable as before


def test_a_tag_and_a_state_with_text_that_is_not_unicode_are_refused_before_any_read(site: Any, hello: Any) -> None:
    # 'balsam job kill --workflow X' filters on a tag and a state: the tag index was probed with the bad text first.
    _job(hello, tags={"workflow": "w"})
    said = _refused(lambda: Job.objects.filter(tags={"workflow": "\udcff"}, state="STAGED_IN").count())
    assert said == "tags: '\\udcff' is not valid Unicode text"


def test_a_filter_key_with_a_double_quote_finds_its_rows(site: Any) -> None:
    """A JSON path cannot name a key with a double quote, so such a key silently matched nothing."""
    site.store.conn.execute("UPDATE site SET allowed_queues='{\"local\": {}}', allowed_projects='[\"local\"]'")
    made = BatchJob(num_nodes=1, wall_time_min=5, queue="local", project="local", job_mode="mpi", site_id=site.id,
                    filter_tags={'say "hi"': "yes", "plain": "1"})
    made.save()
    assert [b.id for b in BatchJob.objects.filter(filter_tags={'say "hi"': "yes"})] == [made.id]
    assert [b.id for b in BatchJob.objects.filter(filter_tags=['say "hi"'])] == [made.id]
    assert [b.id for b in BatchJob.objects.filter(filter_tags={'say "hi"': "no"})] == []
    assert [b.id for b in BatchJob.objects.filter(filter_tags={"plain": "1"})] == [made.id]


@pytest.mark.parametrize("field, value, message", [
    ("tags", "abc", "tags must be a dict of strings, got 'abc'"),
    ("tags", b"x", "tags must be a dict of strings, got b'x'"),
    ("data", "abc", "data must be a dict of plain JSON values"),
    ("parameters", 5, "parameters must be a dict, got 5"),
    ("parameters", "abc", "parameters must be a dict, got 'abc'"),
    ("num_nodes", b"x", "num_nodes must be an integer from 1 to 1000000, got b'x'"),
    ("workdir", b"x", "workdir must be a path, got b'x'"),
])
def test_a_job_field_of_the_wrong_type_is_the_same_error_on_every_host(site: Any, hello: Any, field: str, value: Any,
                                                                       message: str) -> None:
    job = _job(hello, tags={"k": "v"})
    loaded = Job.objects.get(id=job.id)
    setattr(loaded, field, value)
    said = _refused(loaded.save)
    assert said == f"job {job.id}: {message}" or said.startswith(f"job {job.id}: {message}"), said
    said = _refused(lambda: Job.objects.filter(id=job.id).update(**{field: value}))
    assert said.startswith(f"job {job.id}: {message}"), said
    again = Job.objects.get(id=job.id)
    assert (again.tags, str(again.workdir), again.parameters) == ({"k": "v"}, "w/1", {"say_hello_to": "x"})


def test_clearing_tags_by_query_update_is_the_same_on_every_host(site: Any, hello: Any) -> None:
    job = _job(hello, tags={"k": "v"})
    assert Job.objects.filter(id=job.id).update(tags=None) == 1
    assert Job.objects.get(id=job.id).tags == {}


def test_text_that_is_not_unicode_in_a_new_job_is_a_validation_error_not_a_503(site: Any, hello: Any) -> None:
    said = _refused(lambda: Job("w/x", hello, parameters={"say_hello_to": "\ud800"}).save())
    assert said == "'{\"say_hello_to\":\"\\ud800\"}' is not valid Unicode text (bytes that are not UTF-8?): nothing was written"
    assert Job.objects.count() == 0
    assert list(Job.objects.filter(workdir__contains="a\x00b")) == []  # a NUL is scanned for, not an FTS query


@pytest.mark.parametrize("fields, message", [
    ({"num_nodes": b"x"}, "num_nodes must be an integer from 1 to 1000000, got b'x'"),
    ({"wall_time_min": NAN}, "wall_time_min must be an integer from 1 to"),
    ({"queue": b"x"}, "queue must be"),
    ({"job_mode": 5}, "job_mode must be one of mpi, serial, got 5"),
    ({"site_id": "abc"}, "site_id: expected a site id, got 'abc'"),
])
def test_a_batch_job_of_the_wrong_types_is_the_same_error_on_every_host(site: Any, fields: Dict[str, Any], message: str) -> None:
    site.store.conn.execute("UPDATE site SET allowed_queues='{\"local\": {}}', allowed_projects='[\"local\"]'")
    args: Dict[str, Any] = dict(num_nodes=1, wall_time_min=5, queue="local", project="local", job_mode="mpi", site_id=site.id)
    args.update(fields)
    said = _refused(lambda: BatchJob(**args).save())
    assert said.startswith(message), said
    assert BatchJob.objects.count() == 0


@pytest.mark.parametrize("call, message", [
    (lambda: Job.objects.bulk_create([1]), "bulk_create takes Job objects, got 1"),
    (lambda: Job.objects.bulk_create(None), "bulk_create takes a list of Job objects, got None"),
    (lambda: Job.objects.bulk_update([1]), "bulk_update takes Job objects, got 1"),
    (lambda: Job.objects.order_by(5), "cannot order Job by 5 (valid: "),
    (lambda: Job.objects.all()[:1.5], "query slices take integers, got 1.5"),
    (lambda: add_dependency(1, "x"), "child: expected a job id, got 'x'"),
], ids=["bulk_create", "bulk_create_none", "bulk_update", "order_by", "slice", "add_dependency"])
def test_calls_with_the_wrong_types_are_validation_errors(site: Any, hello: Any, call: Callable[[], Any], message: str) -> None:
    said = _refused(call)
    assert said.startswith(message) or message in said, said


def test_add_dependency_names_a_parent_that_is_not_an_id(site: Any, hello: Any) -> None:
    child = _job(hello)
    assert _refused(lambda: add_dependency("x", child)) == "parent: expected a job id, got 'x'"
    assert _refused(lambda: add_dependency(NAN, child)) == "parent: expected a job id, got nan"
    assert Job.objects.get(id=child.id).parent_ids == []


def test_slices_past_any_row_are_empty_on_every_host(site: Any, hello: Any) -> None:
    _job(hello)
    assert list(Job.objects.all()[10**30:]) == []
    assert len(list(Job.objects.all()[: 10**30])) == 1
    with pytest.raises(IndexError):
        Job.objects.all()[2**63]


def _raised_within_a_minute(call: Callable[[], Any]) -> BaseException:
    """What ``call()`` raised, on a thread given a minute (a wait that never ends fails the test instead of hanging it)."""
    outcome: List[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome.append(e)

    waiter = threading.Thread(target=run, daemon=True)
    waiter.start()
    waiter.join(60)
    assert not waiter.is_alive(), "still waiting after a minute"
    assert outcome, "it returned instead of raising"
    return outcome[0]


@pytest.mark.parametrize("timeout", [NAN, "10", True])
def test_waiting_with_a_timeout_that_is_not_a_number_is_refused_not_forever(site: Any, hello: Any, timeout: Any) -> None:
    """``result(timeout=nan)`` waited forever: no clock passes NaN."""
    job = _job(hello)
    raised = _raised_within_a_minute(lambda: job.result(timeout=timeout))
    assert isinstance(raised, ValidationError)
    assert str(raised) == f"timeout: expected a number of seconds or None, got {timeout!r}"


def test_dag_instances_take_hostile_values_as_validation_errors(site: Any, hello: Any) -> None:
    from balsam.api import DAG

    dag = DAG("sweep", site="test-site")
    dag.node("a", app="Hello", workdir="{run}/a", params={"say_hello_to": "{who}"})
    dag.save()
    said = _refused(lambda: dag.instantiate([{"run": "r", "who": b"x"}]))
    assert said.startswith("DAG 'sweep' instance 0: placeholder values must be a dict of plain JSON values"), said
    assert _refused(lambda: dag.instantiate(5)).startswith("DAG 'sweep': instantiate takes a mapping of placeholder values")
    assert _refused(lambda: dag.instances().get("x")) == "id: expected an instance id, got 'x'"
    assert _refused(lambda: dag.instances().filter(id=-1)) == f"id: must be between 1 and {2**63 - 1}, got -1"
    (instance,) = dag.instantiate([{"run": "r", "who": "x"}])
    assert isinstance(_raised_within_a_minute(lambda: instance.wait(timeout=NAN)), ValidationError)
    assert Job.objects.count() == 1


def test_an_id_past_64_bits_matches_no_row_on_every_host(site: Any, hello: Any) -> None:
    job = _job(hello)
    assert list(Job.objects.filter(id=10**30)) == []
    assert [j.id for j in Job.objects.filter(id=[job.id, 10**30])] == [job.id]
    said = _refused(lambda: list(EventLog.objects.filter(job_id=-(2**70))))
    assert said == "job_id: -1180591620717411303424 is out of range (at most 64-bit integers)"
