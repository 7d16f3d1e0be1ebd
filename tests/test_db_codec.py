"""Parameters are plain JSON; a value JSON cannot hold is pickled *out of band* (a column only this process's own
Python objects reach), never because of its shape. Nothing from outside the process is unpickled (defect 1)."""

from __future__ import annotations

import base64
import json
import pickle
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from balsam.api import Job
from balsam.db import codec
from balsam.exceptions import ValidationError
from tests.cli_helpers import fails, ok


class _Touch:
    """A pickle payload that creates a file when unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> Any:
        return (Path.touch, (Path(self.path),))


def _marker(path: Path) -> dict:  # type: ignore[type-arg]
    return {"__pickle__": base64.b64encode(pickle.dumps(_Touch(path))).decode()}


def test_a_pickle_marker_in_a_job_file_is_refused(site: Any, adder: Any, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"workdir": "a", "app": "Adder", "parameters": {"x": _marker(pwned)}}) + "\n")
    err = fails("job", "create", "--from", jobs, "-y", code=2)
    assert "__pickle__" in err and "parameter 'x'" in err
    ok("job", "ls", "-v")
    assert not pwned.exists()
    assert Job.objects.count() == 0


def test_the_marker_is_refused_by_the_api_nested_too(site: Any, adder: Any, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="__pickle__"):
        adder.submit("a", x={"deep": [1, _marker(tmp_path / "p")]})
    job = adder.submit("b", x=1)
    job.parameters = {"x": _marker(tmp_path / "p")}
    with pytest.raises(ValidationError, match="__pickle__"):
        job.save()
    with pytest.raises(ValidationError, match="__pickle__"):
        Job.objects.filter(id=job.id).update(parameters={"x": _marker(tmp_path / "p")})


def test_a_marker_already_in_the_db_is_plain_json(site: Any, adder: Any, tmp_path: Path) -> None:
    """A row written by an older version (or by hand) with the old in-band marker reads as the dict it is."""
    pwned = tmp_path / "pwned"
    job = adder.submit("a", x=1)
    with site.store.write() as conn:
        conn.execute("UPDATE job SET parameters=? WHERE id=?", (json.dumps({"x": _marker(pwned)}), job.id))
    fresh = Job.objects.get(id=job.id)
    assert fresh.parameters == {"x": _marker(pwned)}
    assert codec.decode_parameters(json.dumps({"x": _marker(pwned)})) == {"x": _marker(pwned)}
    ok("job", "ls", "-v")
    assert not pwned.exists()


def test_run_arguments_json_cannot_hold_still_round_trip(site: Any, adder: Any) -> None:
    job = adder.submit("a", x=Fraction(1, 3), y=(1, 2))
    text, blob = site.store.execute("SELECT parameters, parameters_pickled FROM job WHERE id=?", (job.id,))[0]
    assert "__pickle__" not in text and json.loads(text).keys() == {"x", "y"}
    assert blob is not None
    assert Job.objects.get(id=job.id).parameters == {"x": Fraction(1, 3), "y": (1, 2)}
    plain = adder.submit("b", x=1, y=[1, 2])
    assert site.store.execute("SELECT parameters_pickled FROM job WHERE id=?", (plain.id,)) == [(None,)]


@pytest.mark.parametrize("mode", ["mpi", "serial"])
def test_a_launcher_runs_with_pickled_arguments(site: Any, adder: Any, mode: str) -> None:
    from tests.launcher_support import run, runnable

    job = adder.submit(f"run-{mode}", x=Fraction(1, 3), y=Fraction(1, 3))
    runnable(site.store, [job])
    assert run(site, mode) == 0
    job.refresh_from_db()
    assert job.state == "JOB_FINISHED"
    assert pickle.loads(site.store.execute("SELECT serialized_return_value FROM job WHERE id=?", (job.id,))[0][0]) == Fraction(2, 3)
