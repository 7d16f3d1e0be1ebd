"""Throughput, utilization and time-in-state reports over the EventLog, compatible with Balsam 0.7's.

::

    from balsam.api import BatchJob, EventLog
    from balsam.analytics import throughput_report, utilization_report, available_nodes

    times, done = throughput_report(EventLog.objects.filter(tags={"experiment": "xpcs"}), to_state="JOB_FINISHED")
    times, busy = utilization_report(EventLog.objects.filter(batch_job_id=123), node_weighting=True)
    times, held = available_nodes(BatchJob.objects.filter(queue="debug"))

Every report takes a query (computed in SQL in each site's DB, never loading the events as objects) or a
list of API objects. Times are aware UTC datetimes, values plain lists (no numpy needed); ``plt.step(times,
values, where="post")`` draws them. Beyond Balsam: :func:`throughput_rate` (jobs/min over a sliding window),
:func:`durations_report` (queue wait, run and postprocess percentiles by app or tag), :func:`failure_reasons`,
and :func:`state_history`. The ``plot_*`` functions (matplotlib, ``pip install 'balsam[jupyter]'``) return
figures without showing them.
"""

from __future__ import annotations

import datetime as _dt
import heapq
import html
import json
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from balsam._api import sites as _sites
from balsam._api.base import Model, Query, by_site
from balsam.db import analytics as adb
from balsam.db import query as q
from balsam.db.states import JobState, to_states
from balsam.exceptions import ValidationError
from balsam.plotting import plot_durations, plot_states, plot_throughput, plot_utilization

__all__ = [
    "DurationStats",
    "DurationTable",
    "FailureReason",
    "PHASES",
    "available_nodes",
    "durations_report",
    "failure_reasons",
    "plot_durations",
    "plot_states",
    "plot_throughput",
    "plot_utilization",
    "state_history",
    "throughput_rate",
    "throughput_report",
    "utilization_report",
]

PHASES = adb.PHASES
UTC = _dt.timezone.utc
Source = Union[Query[Any], Iterable[Any]]


def _per_site(source: Source, spec: q.TableSpec) -> List[Tuple[Any, Dict[str, Any]]]:
    """(site, filters) pairs that select the same rows as ``source`` (a query, or a list of API objects)."""
    if isinstance(source, Query):
        if source._model._spec is not spec:
            raise ValidationError(f"expected a {spec.noun} query, got a {source._model.__name__} query")
        if source._sliced:
            return [(site, {"id": ids}) for site, ids in source._per_site_ids()]
        filters = dict(source._filters)
        sites = _sites.scope(filters)  # consumes the scope keys
        return [(site, filters) for site in sites]
    objs = list(source)
    for obj in objs:
        if not isinstance(obj, Model) or obj._spec is not spec:
            raise ValidationError(f"expected {spec.noun} objects or a {spec.noun} query, got {type(obj).__name__}")
    return [(site, {"id": [int(o.id or 0) for o in group]}) for site, group in by_site(objs)]


def _dt_list(times: Iterable[float]) -> List[_dt.datetime]:
    fromts = _dt.datetime.fromtimestamp
    return [fromts(t, UTC) for t in times]


def _state_name(state: Any) -> str:
    states = to_states(state)
    if len(states) != 1:
        raise ValidationError(f"expected one job state, got {state!r}")
    return next(iter(states)).value


def _merge_levels(per_site: List[List[Tuple[float, float]]]) -> List[Tuple[float, float]]:
    """Several step functions (time, level) summed into one."""
    if len(per_site) == 1:
        return per_site[0]
    deltas = []
    for rows in per_site:
        prev = 0.0
        part = []
        for t, level in rows:
            part.append((t, level - prev))
            prev = level
        deltas.append(part)
    out, level = [], 0.0
    for t, d in heapq.merge(*deltas):
        level += d
        out.append((t, level))
    return out


def _local(site: Any) -> bool:
    """Whether this process reads the site's DB itself (its home host); else the reports go through its agent's API."""
    return str(site.backend.kind) == "local"


def _event_times(site: Any, filters: Dict[str, Any], state: str) -> List[float]:
    if _local(site):
        return adb.event_times(site.store.conn, filters, state)
    rows = site.backend.select("event", dict(filters, to_state=state) if "to_state" not in filters else filters,
                               columns=("timestamp", "to_state"), order_by=("timestamp", "id"))
    return [float(r[0]) for r in rows if str(r[1]) == state]


def _node_time_rows(site: Any, filters: Dict[str, Any], node_weighting: bool) -> Tuple[List[float], List[float]]:
    if _local(site):
        return adb.node_time_rows(site.store.conn, filters, node_weighting)
    rows = site.backend.select("event", filters, columns=("timestamp", "job_id", "from_state", "to_state", "data"),
                               order_by=("timestamp", "id"))
    runs: List[Tuple[float, int, bool, Optional[float]]] = []
    for ts, job_id, src, dst, data in rows:
        if str(dst) == JobState.RUNNING.value:
            info = json.loads(data) if isinstance(data, str) else (data or {})
            weight = float(info.get("num_nodes", 1.0)) if node_weighting else 1.0
            runs.append((float(ts), int(job_id), True, weight))
        elif str(src) == JobState.RUNNING.value:
            runs.append((float(ts), int(job_id), False, None))
    return adb.run_levels(runs)


def _batch_job_windows(site: Any, filters: Dict[str, Any]) -> List[Tuple[Any, Any, int]]:
    if _local(site):
        return adb.batch_job_windows(site.store.conn, filters)
    rows = site.backend.select("batch_job", filters, columns=("start_time", "end_time", "num_nodes"), order_by=("start_time", "id"))
    return [(r[0], r[1], int(r[2])) for r in rows if r[0] is not None]


# ---------------------------------------------------------------------------------------------- Balsam 0.7
def throughput_report(eventlog_query: Source, to_state: Any = JobState.JOB_FINISHED) -> Tuple[List[_dt.datetime], List[int]]:
    """Cumulative count of jobs reaching ``to_state`` over time, as Balsam 0.7 computes it.

    Returns ``(times, counts)``: the time of each matching event entering ``to_state`` (UTC, ascending)
    and how many have arrived by then (1, 2, 3, ...). Every arrival counts, so a job that reached
    RUN_DONE in three runs counts three times for ``to_state="RUN_DONE"``.

    >>> times, done = throughput_report(EventLog.objects.filter(tags={"exp": "a"}), to_state="JOB_FINISHED")
    """
    state = _state_name(to_state)
    parts = [_event_times(site, filters, state) for site, filters in _per_site(eventlog_query, q.EVENT)]
    times = parts[0] if len(parts) == 1 else list(heapq.merge(*parts))
    return _dt_list(times), list(range(1, len(times) + 1))


def utilization_report(eventlog_query: Source, node_weighting: bool = True) -> Tuple[List[_dt.datetime], List[float]]:
    """Nodes busy running jobs over time, from the RUNNING events' node footprint, as Balsam 0.7 computes it.

    Returns ``(times, nodes)``: at each start or end of a run among the events, how many nodes are busy
    after it. With ``node_weighting`` a run counts ``num_nodes / node_packing_count`` nodes (a job packed
    four to a node counts 0.25); without, each running job counts 1. A job that ran several times counts
    once per run; an end whose start falls outside the query (a time filter) is left out.

    >>> times, busy = utilization_report(EventLog.objects.filter(batch_job_id=123), node_weighting=True)
    """
    parts = [_node_time_rows(site, filters, node_weighting) for site, filters in _per_site(eventlog_query, q.EVENT)]
    if len(parts) == 1:
        return _dt_list(parts[0][0]), parts[0][1]
    rows = _merge_levels([list(zip(*p)) for p in parts])
    return _dt_list(t for t, _ in rows), [v for _, v in rows]


def available_nodes(batchjob_query: Source) -> Tuple[List[_dt.datetime], List[int]]:
    """Nodes held by BatchJobs over time: each adds ``num_nodes`` at its start_time, removes them at its end_time.

    Returns ``(times, nodes)``, one point per start or end (BatchJobs that never started are left out).

    >>> times, held = available_nodes(BatchJob.objects.filter(queue="debug"))
    """
    deltas: List[Tuple[float, int]] = []
    for site, filters in _per_site(batchjob_query, q.BATCH_JOB):
        for start, end, nodes in _batch_job_windows(site, filters):
            deltas.append((float(start or 0.0), int(nodes)))
            if end is not None:
                deltas.append((float(end), -int(nodes)))
    deltas.sort()
    times, levels, level = [], [], 0
    for t, d in deltas:
        level += d
        times.append(t)
        levels.append(level)
    return _dt_list(times), levels


# ---------------------------------------------------------------------------------------------- beyond Balsam
def throughput_rate(
    eventlog_query: Source, to_state: Any = JobState.JOB_FINISHED, window_s: float = 60.0, step_s: Optional[float] = None
) -> Tuple[List[_dt.datetime], List[float]]:
    """Jobs per minute reaching ``to_state``, over a sliding window of ``window_s`` seconds.

    Returns ``(times, jobs_per_min)`` sampled every ``step_s`` seconds (default: window_s / 4, at most 2,000
    samples) from the first arrival to one window after the last (where it is back to 0); each value counts the arrivals in
    ``(t - window_s, t]``, scaled to a minute.
    """
    if window_s <= 0:
        raise ValidationError(f"window_s must be positive, got {window_s}")
    times, _ = throughput_report(eventlog_query, to_state)
    ts = [t.timestamp() for t in times]
    if not ts:
        return [], []
    end = ts[-1] + window_s
    step = step_s if step_s is not None else window_s / 4
    if step <= 0:
        raise ValidationError(f"step_s must be positive, got {step_s}")
    step = max(step, (end - ts[0]) / 2000)
    out_t, out_v = [], []
    lo = hi = 0
    scale = 60.0 / window_s
    n = 0
    while True:
        t = min(ts[0] + n * step, end)
        while hi < len(ts) and ts[hi] <= t:
            hi += 1
        while lo < hi and ts[lo] <= t - window_s:
            lo += 1
        out_t.append(t)
        out_v.append((hi - lo) * scale)
        if t >= end:
            break
        n += 1
    return _dt_list(out_t), out_v


def state_history(eventlog_query: Source, bins: int = 200) -> Tuple[List[_dt.datetime], Dict[str, List[int]]]:
    """How many jobs were in each state over time: ``(times, {state: counts})`` at ``bins`` evenly spaced times.

    Built from the events' from/to states (a job enters its first state with its creation event), so it
    covers the jobs whose events the query selects.
    """
    rows: List[Tuple[float, str, str]] = []
    for site, filters in _per_site(eventlog_query, q.EVENT):
        part = adb.state_deltas(site.store.conn, filters)
        rows = part if not rows else list(heapq.merge(rows, part))
    if not rows:
        return [], {}
    bins = max(int(bins), 2)
    t0, t1 = rows[0][0], rows[-1][0]
    width = (t1 - t0) / (bins - 1) if t1 > t0 else 1.0
    samples = [t0 + i * width for i in range(bins)]
    counts: Dict[str, int] = {}
    series: Dict[str, List[int]] = {}
    i = 0
    for n, t in enumerate(samples):
        while i < len(rows) and rows[i][0] <= t + 1e-9:
            _, src, dst = rows[i]
            if src in counts:
                counts[src] -= 1
            counts[dst] = counts.get(dst, 0) + 1
            if dst not in series:
                series[dst] = [0] * bins
            i += 1
        for state, c in counts.items():
            series[state][n] = max(c, 0)
    series.pop(JobState.CREATED.value, None)
    return _dt_list(samples), series


def _percentile(sorted_values: Sequence[float], p: float) -> float:
    """The p-th percentile by linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * p / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


@dataclass(frozen=True)
class DurationStats:
    """Time spent in one phase by the jobs of one group, in seconds."""

    group: str
    phase: str
    count: int
    mean: float
    percentiles: Dict[float, float]
    max: float


class DurationTable(List[DurationStats]):
    """The rows of :func:`durations_report`; shows as a table in Jupyter."""

    def _repr_html_(self) -> str:
        ps = sorted({p for row in self for p in row.percentiles})
        head = "".join(f"<th>{h}</th>" for h in ["group", "phase", "count", "mean (s)", *[f"p{p:g} (s)" for p in ps], "max (s)"])
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in
                             [r.group, r.phase, r.count, f"{r.mean:.3g}", *[f"{r.percentiles.get(p, float('nan')):.3g}" for p in ps],
                              f"{r.max:.3g}"]) + "</tr>"
            for r in self
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def durations_report(
    eventlog_query: Source, group_by: Optional[str] = "app", percentiles: Sequence[float] = (50, 90, 99)
) -> DurationTable:
    """Percentiles of the time jobs spent waiting for a launcher, running, and postprocessing.

    Phases (:data:`PHASES`): ``queue_wait`` (PREPROCESSED or RESTART_READY until the next event),
    ``run`` (RUNNING until it ends) and ``postprocess`` (RUN_DONE until the job finishes). Each visit is a
    sample, so a job that ran twice gives two run times. ``group_by``: ``"app"``, ``"tag:<key>"`` (that tag's
    value) or None (all together). Percentiles interpolate linearly between closest ranks.

    >>> durations_report(EventLog.objects.filter(tags={"exp": "a"}), group_by="tag:size")
    """
    if group_by not in (None, "", "app") and not str(group_by).startswith("tag:"):
        raise ValidationError(f"group_by must be 'app', 'tag:<key>' or None, got {group_by!r}")
    for p in percentiles:
        if not 0 <= p <= 100:
            raise ValidationError(f"percentiles must be between 0 and 100, got {p}")
    samples: Dict[Tuple[str, str], List[float]] = {}
    for site, filters in _per_site(eventlog_query, q.EVENT):
        for key, values in adb.phase_durations(site.store.conn, filters, group_by or "").items():
            samples[key] = sorted(samples[key] + values) if key in samples else values
    order = {phase: n for n, phase in enumerate(PHASES)}
    table = DurationTable()
    for (grp, phase), values in sorted(samples.items(), key=lambda kv: (kv[0][0], order[kv[0][1]])):
        table.append(DurationStats(group=grp, phase=phase, count=len(values), mean=sum(values) / len(values),
                                   percentiles={float(p): _percentile(values, p) for p in percentiles}, max=values[-1]))
    return table


@dataclass(frozen=True)
class FailureReason:
    """Failed jobs sharing one reason: the reason, how many, and a few of their ids."""

    reason: str
    count: int
    job_ids: List[int]


_NUMBER = re.compile(r"\d+")


def _reason(data: Dict[str, Any]) -> str:
    text = str(data.get("message") or data.get("error") or "").strip()
    line = text.splitlines()[-1].strip()[:200] if text else "(no message recorded)"
    line = _NUMBER.sub("<n>", line)
    if "returncode" in data and not data.get("message"):
        return f"exit code {data['returncode']}: {line}"
    return line


def failure_reasons(job_query: Source, examples: int = 5) -> List[FailureReason]:
    """The FAILED jobs among ``job_query`` grouped by why they failed, most common first.

    A job's reason is the last line of its latest recorded message or error (a hook's exception, a failed
    parent, a run's exit code and the last line of its output), with numbers replaced by ``<n>`` so that
    "parent job 12 is FAILED" and "parent job 13 is FAILED" group together.

    >>> for r in failure_reasons(Job.objects.filter(tags={"exp": "a"})): print(r.count, r.reason)
    """
    groups: Dict[str, List[int]] = {}
    for site, filters in _per_site(job_query, q.JOB):
        for job_id, data in adb.failure_rows(site.store.conn, filters):
            groups.setdefault(_reason(data), []).append(job_id)
    out = [FailureReason(reason, len(ids), ids[:examples]) for reason, ids in groups.items()]
    out.sort(key=lambda r: (-r.count, r.reason))
    return out
