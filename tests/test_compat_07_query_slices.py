"""Balsam 0.7's query slicing (docs/user-guide/api.md, "Order By and Slicing") with a step, on the home host and from
another host through the agent: ``Job.objects.filter(...).order_by("workdir")[0:10:2]`` is every second job of the
slice, as a Python list slice would be.

What differed and is now fixed: a step was refused ("query slices cannot have a step"). Balsam 0.7 returned a list,
taking the slice's start twice (``q[2:10:2]`` began at the fifth object); here the step-th objects of the slice
itself, in a query whose ``count()``, ``update()`` and ``delete()`` act on exactly those.
"""

from __future__ import annotations

from typing import Any

import pytest

from balsam.api import Job
from balsam.exceptions import ValidationError

BACKENDS = ("local", "http")


def test_slices_with_a_step_are_the_step_th_objects_of_the_slice(site: Any, hello: Any) -> None:
    Job.objects.bulk_create([Job(f"run/{i:02d}", app_id=hello, parameters={"say_hello_to": str(i)}) for i in range(12)])
    query = Job.objects.all().order_by("workdir")
    workdirs = [str(j.workdir) for j in query]
    assert [str(j.workdir) for j in query[::2]] == workdirs[::2]
    assert [str(j.workdir) for j in query[2:10:3]] == workdirs[2:10:3] == ["run/02", "run/05", "run/08"]
    assert [str(j.workdir) for j in query[1:][::4]] == workdirs[1:][::4]
    assert query[2:10:3].count() == 3 and len(query[::5]) == 3

    assert query[1::2].update(tags={"odd": "yes"}) == 6
    assert sorted(str(j.workdir) for j in Job.objects.filter(tags={"odd": "yes"})) == workdirs[1::2]
    assert query[::3].delete() == 4
    assert [str(j.workdir) for j in Job.objects.all().order_by("workdir")] == [w for i, w in enumerate(workdirs) if i % 3]

    for bad in (-1, 0):
        with pytest.raises(ValidationError, match="positive step"):
            query[::bad]
