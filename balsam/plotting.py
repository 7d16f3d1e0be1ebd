"""matplotlib figures of the analytics reports: throughput, utilization, job states over time, durations.

Each function returns a ``matplotlib.figure.Figure`` built without pyplot (nothing is shown, no global
figure is left open); Jupyter displays a returned figure, and ``fig.savefig("x.png")`` writes it. Times are
drawn in this machine's local time zone, named on the axis. matplotlib is an optional extra: importing this
module does not import it, and without it each function raises one line saying what to install.
"""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from balsam.exceptions import BalsamError
from balsam.states import DISPLAY_ORDER, JobState

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["MissingExtra", "plot_durations", "plot_states", "plot_throughput", "plot_utilization"]


class MissingExtra(BalsamError):
    """An optional dependency is not installed; the message says what to install."""


def _figure(width: float = 8.0, height: float = 4.0) -> "Figure":
    try:
        from balsam._figure import NotebookFigure
    except ImportError:
        raise MissingExtra("plotting needs matplotlib: pip install 'balsam[jupyter]' (or pip install matplotlib)") from None
    return NotebookFigure(figsize=(width, height), layout="constrained")


def _local_tz() -> _dt.tzinfo:
    tz = _dt.datetime.now().astimezone().tzinfo
    assert tz is not None
    return tz


def _time_axis(ax: "Axes") -> None:
    """Local-time ticks that stay readable from seconds to weeks, with the zone in the label."""
    import matplotlib.dates as mdates

    tz = _local_tz()
    locator = mdates.AutoDateLocator(tz=tz, maxticks=8)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=tz))  # type: ignore[no-untyped-call]
    ax.set_xlabel(f"Time (local, {_dt.datetime.now(tz).strftime('%Z') or tz})")


def _local(times: Sequence[_dt.datetime]) -> Any:
    """The times in the local zone (typed Any: matplotlib's stubs want arrays, and it takes datetimes)."""
    tz = _local_tz()
    return [t.astimezone(tz) for t in times]


def _empty(ax: "Axes", what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", transform=ax.transAxes, color="gray")


def plot_throughput(
    eventlog_query: Any, to_state: Any = JobState.JOB_FINISHED, window_s: Optional[float] = 60.0, title: Optional[str] = None
) -> "Figure":
    """Cumulative jobs reaching ``to_state`` over time and, with ``window_s``, the rate in jobs/min.

    The cumulative count (left axis) is :func:`balsam.analytics.throughput_report`; the rate (right axis) is
    :func:`balsam.analytics.throughput_rate` over a ``window_s``-second sliding window.
    """
    from balsam.analytics import throughput_rate, throughput_report

    fig = _figure()
    ax = fig.add_subplot()
    times, counts = throughput_report(eventlog_query, to_state)
    state = str(getattr(to_state, "value", to_state))
    if times:
        ax.step(_local(times), counts, where="post", color="tab:blue", label=f"jobs reaching {state}")
    else:
        _empty(ax, f"{state} events")
    ax.set_ylabel(f"Jobs reaching {state} (cumulative count)")
    ax.set_ylim(bottom=0)
    if window_s and times:
        rt, rate = throughput_rate(eventlog_query, to_state, window_s=window_s)
        ax2 = ax.twinx()
        ax2.plot(_local(rt), rate, color="tab:orange", alpha=0.8, label=f"rate ({window_s:g} s window)")
        ax2.set_ylabel("Throughput (jobs/min)")
        ax2.set_ylim(bottom=0)
        lines = ax.get_lines() + ax2.get_lines()
        ax.legend(lines, [str(line.get_label()) for line in lines], loc="upper left")
    _time_axis(ax)
    ax.grid(alpha=0.3)
    ax.set_title(title or f"Throughput: jobs reaching {state}")
    return fig


def plot_utilization(
    eventlog_query: Any, batchjob_query: Any = None, node_weighting: bool = True, title: Optional[str] = None
) -> "Figure":
    """Nodes busy running jobs over time and, given BatchJobs, the nodes they held (what could have been busy).

    Busy nodes are :func:`balsam.analytics.utilization_report`; held nodes are
    :func:`balsam.analytics.available_nodes`, drawn as one outline however many BatchJobs there are.
    """
    from balsam.analytics import available_nodes, utilization_report

    fig = _figure()
    ax = fig.add_subplot()
    times, busy = utilization_report(eventlog_query, node_weighting=node_weighting)
    if times:
        ax.fill_between(_local(times), busy, step="post", color="tab:green", alpha=0.45, label="busy (running jobs)")
        ax.step(_local(times), busy, where="post", color="tab:green", linewidth=1)
    if batchjob_query is not None:
        bt, held = available_nodes(batchjob_query)
        if bt:
            ax.step(_local(bt), held, where="post", color="black", linewidth=1.2, label="held by BatchJobs")
    if not times:
        _empty(ax, "runs")
    ax.set_ylabel("Nodes" + (" (weighted by node packing)" if node_weighting else " (running jobs)"))
    ax.set_ylim(bottom=0)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left")
    _time_axis(ax)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Utilization")
    return fig


_STATE_ORDER = [s.value for s in DISPLAY_ORDER]


def plot_states(eventlog_query: Any, bins: int = 200, title: Optional[str] = None) -> "Figure":
    """A stacked area of how many jobs were in each state over time (:func:`balsam.analytics.state_history`)."""
    from balsam.analytics import state_history

    fig = _figure()
    ax = fig.add_subplot()
    times, series = state_history(eventlog_query, bins=bins)
    states = [s for s in _STATE_ORDER if s in series] + sorted(s for s in series if s not in _STATE_ORDER)
    if times and states:
        import matplotlib

        cmap = matplotlib.colormaps["tab20"]
        colors = [cmap(_STATE_ORDER.index(s) if s in _STATE_ORDER else 19) for s in states]
        ax.stackplot(_local(times), *[series[s] for s in states], labels=states, colors=colors, alpha=0.85)
        ax.legend(loc="upper left", fontsize="small", ncol=2)
    else:
        _empty(ax, "events")
    ax.set_ylabel("Jobs (count)")
    ax.set_ylim(bottom=0)
    _time_axis(ax)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Jobs by state")
    return fig


def plot_durations(
    eventlog_query: Any, group_by: Optional[str] = "app", percentiles: Tuple[float, float, float] = (50, 90, 99),
    title: Optional[str] = None,
) -> "Figure":
    """Per phase (queue wait, run, postprocess), each group's first percentile (median) as a bar, the others as marks.

    Numbers come from :func:`balsam.analytics.durations_report`; durations are on a log scale when they
    span more than two decades.
    """
    from balsam.analytics import PHASES, durations_report

    rows = durations_report(eventlog_query, group_by=group_by, percentiles=percentiles)
    groups = sorted({r.group for r in rows}) or [""]
    phases = list(PHASES)
    fig = _figure(8.0, 1.2 + 0.9 * len(phases) + 0.25 * len(phases) * len(groups))
    axes = fig.subplots(len(phases), 1, sharex=True, squeeze=False)[:, 0]
    by_key: Dict[Tuple[str, str], Any] = {(r.group, r.phase): r for r in rows}
    mid_p, lo_p, hi_p = (float(p) for p in percentiles)  # the bar, then two marks
    values: List[float] = []
    for ax, phase in zip(axes, phases):
        ys = list(range(len(groups)))
        mids = [by_key[(g, phase)].percentiles[mid_p] if (g, phase) in by_key else 0.0 for g in groups]
        ax.barh(ys, mids, color="tab:blue", alpha=0.6, label=f"p{mid_p:g}" if phase == phases[0] else None)
        for g_i, g in enumerate(groups):
            r = by_key.get((g, phase))
            if r is None:
                continue
            values.extend(v for v in r.percentiles.values() if v > 0)
            ax.plot([r.percentiles[lo_p]], [g_i], "k|", markersize=10, label=f"p{lo_p:g}" if phase == phases[0] and g_i == 0 else None)
            ax.plot([r.percentiles[hi_p]], [g_i], "r|", markersize=10, label=f"p{hi_p:g}" if phase == phases[0] and g_i == 0 else None)
            ax.text(max(r.percentiles.values()), g_i, f"  n={r.count}", va="center", fontsize="small")
        ax.set_yticks(ys, [g or "(all)" for g in groups])
        ax.set_ylabel(phase.replace("_", " "))
        ax.grid(alpha=0.3, axis="x")
    if values and max(values) / max(min(values), 1e-9) > 100:
        axes[-1].set_xscale("log")
    axes[-1].set_xlabel("Duration (s)")
    if not rows:
        _empty(axes[0], "durations")
    elif axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, fontsize="small", frameon=False)
    fig.suptitle(title or ("Time in each phase" + (f" by {group_by}" if group_by else "")))
    return fig
