"""What Jupyter's ``?`` shows: every public class, function and method has a signature and a docstring."""

from __future__ import annotations

import inspect
from typing import Any, Iterator, List, Tuple

import pytest

import balsam.analytics
import balsam.api
import balsam.widgets

MODULES = [balsam.api, balsam.analytics, balsam.widgets]


def _public() -> Iterator[Tuple[str, Any]]:
    for module in MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{module.__name__}.{name}", obj
                if inspect.isclass(obj) and not issubclass(obj, BaseException):
                    for attr, member in vars(obj).items():
                        if not attr.startswith("_") and (inspect.isfunction(member) or isinstance(member, (classmethod, staticmethod))):
                            yield f"{module.__name__}.{name}.{attr}", getattr(obj, attr)
    for manager in (balsam.api.Job.objects, balsam.api.BatchJob.objects, balsam.api.EventLog.objects):
        for klass in type(manager).__mro__:
            for attr, member in vars(klass).items():
                if not attr.startswith("_") and inspect.isfunction(member):
                    yield f"{type(manager).__name__}.{attr}", getattr(manager, attr)
    query = balsam.api.Job.objects.all()
    for attr, member in vars(type(query)).items():
        if not attr.startswith("_") and inspect.isfunction(member):
            yield f"Query.{attr}", getattr(query, attr)


def test_every_public_name_has_a_signature_and_a_docstring() -> None:
    missing: List[str] = []
    for qualname, obj in _public():
        doc = inspect.getdoc(obj)
        if not doc or len(doc.strip()) < 10:
            missing.append(f"{qualname}: no docstring")
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            continue  # raised, not called: the docstring is what ? shows
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            missing.append(f"{qualname}: no signature")
            continue
        if any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values()) and qualname.endswith("__init__"):
            missing.append(f"{qualname}: *args hides the parameters")
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("func,params", [
    (balsam.analytics.throughput_report, ["eventlog_query", "to_state"]),
    (balsam.analytics.utilization_report, ["eventlog_query", "node_weighting"]),
    (balsam.analytics.available_nodes, ["batchjob_query"]),
    (balsam.api.Job.objects.as_completed, ["jobs", "timeout", "poll_interval", "progress"]),
    (balsam.widgets.JobBrowser, ["query", "page_size"]),
])
def test_signatures_name_their_parameters(func: Any, params: List[str]) -> None:
    assert list(inspect.signature(func).parameters) == params
