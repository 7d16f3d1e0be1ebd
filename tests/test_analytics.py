"""balsam.analytics against a scripted event history whose answers were worked out by hand.

History (seconds after T0), three jobs of two apps:
  A (Hello, size=small): PREPROCESSED 1, RUNNING 10 (0.25 node), RUN_TIMEOUT 20, RESTART_READY 21,
                         RUNNING 30 (0.25 node), RUN_DONE 50, POSTPROCESSED 52, JOB_FINISHED 53   (ran twice)
  B (Hello, size=big):   PREPROCESSED 2, RUNNING 15 (2 nodes), RUN_ERROR 40 (exit 3), FAILED 41
  C (Adder, size=small): PREPROCESSED 3, RUNNING 25 (1 node), RUN_DONE 35, POSTPROCESSED 39, JOB_FINISHED 40
plus D and E, FAILED because a parent failed, and three BatchJobs.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Dict, List, Tuple

import pytest

from balsam import analytics
from balsam.analytics import (
    available_nodes,
    durations_report,
    failure_reasons,
    state_history,
    throughput_rate,
    throughput_report,
    utilization_report,
)
from balsam.api import BatchJob, EventLog, Job
from balsam.db.codec import dumps

T0 = 1_700_000_000.0


def at(*offsets: float) -> List[dt.datetime]:
    return [dt.datetime.fromtimestamp(T0 + o, dt.timezone.utc) for o in offsets]


HISTORY: Dict[str, List[Tuple[float, str, str, Dict[str, Any]]]] = {
    "A": [(0, "CREATED", "STAGED_IN", {}), (1, "STAGED_IN", "PREPROCESSED", {}), (10, "PREPROCESSED", "RUNNING", {"num_nodes": 0.25}),
          (20, "RUNNING", "RUN_TIMEOUT", {}), (21, "RUN_TIMEOUT", "RESTART_READY", {}), (30, "RESTART_READY", "RUNNING", {"num_nodes": 0.25}),
          (50, "RUNNING", "RUN_DONE", {}), (52, "RUN_DONE", "POSTPROCESSED", {}), (53, "POSTPROCESSED", "JOB_FINISHED", {})],
    "B": [(0, "CREATED", "STAGED_IN", {}), (2, "STAGED_IN", "PREPROCESSED", {}), (15, "PREPROCESSED", "RUNNING", {"num_nodes": 2.0}),
          (40, "RUNNING", "RUN_ERROR", {"returncode": 3, "error": "starting\nboom at step 42"}), (41, "RUN_ERROR", "FAILED", {})],
    "C": [(0, "CREATED", "STAGED_IN", {}), (3, "STAGED_IN", "PREPROCESSED", {}), (25, "PREPROCESSED", "RUNNING", {"num_nodes": 1.0}),
          (35, "RUNNING", "RUN_DONE", {}), (39, "RUN_DONE", "POSTPROCESSED", {}), (40, "POSTPROCESSED", "JOB_FINISHED", {})],
    "D": [(0, "CREATED", "AWAITING_PARENTS", {}), (41, "AWAITING_PARENTS", "FAILED", {"message": "parent job 12 is FAILED"})],
    "E": [(0, "CREATED", "AWAITING_PARENTS", {}), (41, "AWAITING_PARENTS", "FAILED", {"message": "parent job 13 is FAILED"})],
}
FINAL = {"A": "JOB_FINISHED", "B": "FAILED", "C": "JOB_FINISHED", "D": "FAILED", "E": "FAILED"}


@pytest.fixture
def scripted(site: Any, hello: Any, adder: Any) -> Dict[str, int]:
    """The history above written into the site DB; returns job ids by letter."""
    apps = {"A": hello, "B": hello, "C": adder, "D": hello, "E": hello}
    sizes = {"A": "small", "B": "big", "C": "small", "D": "small", "E": "small"}
    ids: Dict[str, int] = {}
    for name, app in apps.items():
        params = {"say_hello_to": name} if app is hello else {"x": 1}
        job = Job(f"hist/{name}", app, tags={"size": sizes[name], "hist": "1"}, parameters=params)
        job.save()
        ids[name] = int(job.id or 0)
    with site.store.write() as conn:
        conn.execute("DELETE FROM event")
        for name, events in HISTORY.items():
            for offset, src, dst, data in events:
                conn.execute("INSERT INTO event (job_id, timestamp, from_state, to_state, data) VALUES (?, ?, ?, ?, ?)",
                             (ids[name], T0 + offset, src, dst, dumps(data) if data else None))
            conn.execute("UPDATE job SET state = ? WHERE id = ?", (FINAL[name], ids[name]))
        for start, end, nodes in [(5, 60, 4), (30, None, 2), (None, None, 8)]:
            conn.execute(
                "INSERT INTO batch_job (project, queue, num_nodes, wall_time_min, job_mode, state, start_time, end_time, created, last_update) "
                "VALUES ('p', 'q', ?, 10, 'mpi', 'running', ?, ?, ?, ?)",
                (nodes, None if start is None else T0 + start, None if end is None else T0 + end, T0, T0))
    return ids


def test_throughput_counts_every_arrival(scripted: Dict[str, int]) -> None:
    assert throughput_report(EventLog.objects.all()) == (at(40, 53), [1, 2])
    assert throughput_report(EventLog.objects.filter(tags={"size": "small"}), to_state="RUN_DONE") == (at(35, 50), [1, 2])
    # A ran twice: both of its RUNNING arrivals count.
    assert throughput_report(EventLog.objects.all(), to_state="RUNNING") == (at(10, 15, 25, 30), [1, 2, 3, 4])
    # A list of events gives the same answer as the query it came from.
    assert throughput_report(list(EventLog.objects.filter(to_state="JOB_FINISHED"))) == (at(40, 53), [1, 2])


def test_utilization_weights_runs_by_footprint(scripted: Dict[str, int]) -> None:
    times, busy = utilization_report(EventLog.objects.all(), node_weighting=True)
    assert times == at(10, 15, 20, 25, 30, 35, 40, 50)
    assert busy == [0.25, 2.25, 2.0, 3.0, 3.25, 2.25, 0.25, 0.0]
    times, running = utilization_report(EventLog.objects.all(), node_weighting=False)
    assert running == [1, 2, 1, 2, 3, 2, 1, 0]
    # A run that started before the window: its end is left out instead of going negative.
    times, busy = utilization_report(EventLog.objects.filter(timestamp_after=dt.datetime.fromtimestamp(T0 + 12, dt.timezone.utc)))
    assert (times, busy) == (at(15, 25, 30, 35, 40, 50), [2.0, 3.0, 3.25, 2.25, 0.25, 0.0])


def test_available_nodes_from_batch_jobs(scripted: Dict[str, int]) -> None:
    assert available_nodes(BatchJob.objects.all()) == (at(5, 30, 60), [4, 6, 2])


def test_throughput_rate_sliding_window(scripted: Dict[str, int]) -> None:
    times, rate = throughput_rate(EventLog.objects.all(), window_s=60, step_s=10)
    assert times == at(40, 50, 60, 70, 80, 90, 100, 110, 113)  # until one window after the last arrival
    assert rate == [1, 1, 2, 2, 2, 2, 1, 1, 0]
    _, per_min = throughput_rate(EventLog.objects.all(), window_s=30, step_s=10)
    assert per_min[:3] == [2, 2, 4]  # 1 job in 30 s is 2 jobs/min


def test_durations_by_app_and_tag(scripted: Dict[str, int]) -> None:
    by_app = {(r.group, r.phase): r for r in durations_report(EventLog.objects.all(), group_by="app")}
    run = by_app[("Hello", "run")]
    assert run.count == 3 and run.max == 25 and run.mean == pytest.approx(55 / 3)  # A: 10 and 20, B: 25
    assert run.percentiles == {50.0: 20.0, 90.0: pytest.approx(24.0), 99.0: pytest.approx(24.9)}
    assert by_app[("Hello", "queue_wait")].count == 3 and by_app[("Hello", "queue_wait")].percentiles[50.0] == 9  # 9, 9, 13
    assert by_app[("Hello", "postprocess")].max == 3  # RUN_DONE 50 -> JOB_FINISHED 53 is one visit
    assert by_app[("Adder", "postprocess")].max == 5
    assert by_app[("Adder", "queue_wait")].max == 22
    by_tag = {(r.group, r.phase): r for r in durations_report(EventLog.objects.all(), group_by="tag:size", percentiles=[0, 100])}
    assert by_tag[("small", "run")].percentiles == {0.0: 10, 100.0: 20} and by_tag[("small", "run")].count == 3
    assert by_tag[("big", "run")].count == 1
    assert "<table>" in durations_report(EventLog.objects.all())._repr_html_()


def test_failure_reasons_grouped(scripted: Dict[str, int]) -> None:
    reasons = failure_reasons(Job.objects.filter(tags={"hist": "1"}))
    assert [(r.reason, r.count, r.job_ids) for r in reasons] == [
        ("parent job <n> is FAILED", 2, [scripted["D"], scripted["E"]]),
        ("exit code 3: boom at step <n>", 1, [scripted["B"]]),
    ]


def test_state_history_counts_jobs_in_each_state(scripted: Dict[str, int]) -> None:
    times, series = state_history(EventLog.objects.all(), bins=54)  # one sample a second, T0..T0+53
    assert times[0] == at(0)[0] and times[-1] == at(53)[0]
    assert series["RUNNING"][12] == 1 and series["RUNNING"][16] == 2 and series["RUNNING"][31] == 3
    assert series["JOB_FINISHED"][-1] == 2 and series["FAILED"][-1] == 3
    assert all(sum(s[n] for s in series.values()) == 5 for n in range(54))


def test_reports_refuse_the_wrong_query(scripted: Dict[str, int]) -> None:
    from balsam.exceptions import ValidationError

    with pytest.raises(ValidationError, match="expected a EventLog query"):
        throughput_report(Job.objects.all())
    with pytest.raises(ValidationError, match="group_by"):
        durations_report(EventLog.objects.all(), group_by="color")


def test_no_matplotlib_import_and_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    code = ("import sys, balsam.api, balsam.analytics; "
            "assert 'matplotlib' not in sys.modules and 'ipywidgets' not in sys.modules, 'eager import'")
    subprocess.run([sys.executable, "-c", code], check=True)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.delitem(sys.modules, "balsam._figure", raising=False)
    from balsam.plotting import MissingExtra

    with pytest.raises(MissingExtra, match=r"pip install 'balsam\[jupyter\]'"):
        analytics.plot_throughput([])


def test_plots_are_labelled_figures(scripted: Dict[str, int], tmp_path: Any) -> None:
    pytest.importorskip("matplotlib")
    figs = {
        "throughput": analytics.plot_throughput(EventLog.objects.all(), window_s=30),
        "utilization": analytics.plot_utilization(EventLog.objects.all(), BatchJob.objects.all()),
        "states": analytics.plot_states(EventLog.objects.all()),
        "durations": analytics.plot_durations(EventLog.objects.all(), group_by="tag:size"),
    }
    labels = {name: [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes] for name, fig in figs.items()}
    assert labels["throughput"][0][0].startswith("Time (local") and labels["throughput"][0][1] == "Jobs reaching JOB_FINISHED (cumulative count)"
    assert labels["throughput"][1][1] == "Throughput (jobs/min)"
    assert labels["utilization"][0][1] == "Nodes (weighted by node packing)"
    assert labels["states"][0][1] == "Jobs (count)"
    assert labels["durations"][-1][0] == "Duration (s)" and [yl for _, yl in labels["durations"]] == ["queue wait", "run", "postprocess"]
    # The held-nodes outline reaches the BatchJobs' 6 nodes; busy nodes peak at 3.25.
    util = figs["utilization"].axes[0]
    assert max(max(line.get_ydata()) for line in util.get_lines()) == 6  # type: ignore[type-var]
    legend = figs["states"].axes[0].get_legend()
    assert {t.get_text() for t in legend.get_texts()} >= {"RUNNING", "JOB_FINISHED", "FAILED"}
    for name, fig in figs.items():
        out = tmp_path / f"{name}.png"
        fig.savefig(out)
        assert out.stat().st_size > 10_000


def test_utilization_plot_stays_one_outline_with_thousands_of_batch_jobs(scripted: Dict[str, int], site: Any) -> None:
    pytest.importorskip("matplotlib")
    with site.store.write() as conn:
        conn.executemany(
            "INSERT INTO batch_job (project, queue, num_nodes, wall_time_min, job_mode, state, start_time, end_time, created, last_update) "
            "VALUES ('p', 'q', 2, 10, 'mpi', 'finished', ?, ?, ?, ?)",
            [(T0 + i, T0 + i + 600, T0, T0) for i in range(3000)])
    times, held = available_nodes(BatchJob.objects.all())
    assert len(times) == 6003 and max(held) == 2 * 600 + 2  # 600 overlap at a time, plus the 2-node one still running
    fig = analytics.plot_utilization(EventLog.objects.all(), BatchJob.objects.all())
    ax = fig.axes[0]
    assert [str(line.get_label()) for line in ax.get_lines() if not str(line.get_label()).startswith("_")] == ["held by BatchJobs"]
    assert ax.get_legend() is not None and len(ax.get_legend().get_texts()) == 2


def test_reports_merge_sites(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two sites in scope: one curve, as if their events were in one DB."""
    from balsam._api import sites
    from balsam.site import init_site

    refs = []
    for name in ("site-a", "site-b"):
        init_site(tmp_path / name, name=name)
        refs.append(sites.resolve(name))
    for n, ref in enumerate(refs):
        with ref.store.write() as conn:
            for job_id, (start, end) in enumerate([(10 + n, 20 + n), (30 + n, 40 + n)], start=1):
                conn.execute("INSERT INTO event (job_id, timestamp, from_state, to_state, data) VALUES (?, ?, 'PREPROCESSED', 'RUNNING', ?)",
                             (job_id, T0 + start, dumps({"num_nodes": 1.0 + n})))
                conn.execute("INSERT INTO event (job_id, timestamp, from_state, to_state, data) VALUES (?, ?, 'RUNNING', 'RUN_DONE', NULL)",
                             (job_id, T0 + end))
    assert throughput_report(EventLog.objects.all(), to_state="RUN_DONE") == (at(20, 21, 40, 41), [1, 2, 3, 4])
    times, busy = utilization_report(EventLog.objects.all())
    assert times == at(10, 11, 20, 21, 30, 31, 40, 41)
    assert busy == [1.0, 3.0, 2.0, 0.0, 1.0, 3.0, 2.0, 0.0]
    assert len(throughput_report(EventLog.objects.filter(site_name="site-b"), to_state="RUN_DONE")[0]) == 2
