"""Notebook niceties outside a kernel: HTML reprs, the progress bar (text and widget), the job browser."""

from __future__ import annotations

import io
import threading
from typing import Any, List

import pytest

from balsam.api import BatchJob, EventLog, Job, Site
from balsam.db.jobs import StateChange, apply_state_changes


def _jobs(hello: Any, n: int, **tags: str) -> List[Job]:
    jobs = [Job(f"w/{i}", hello, tags={"batch": "w", **tags}, parameters={"say_hello_to": str(i)}) for i in range(n)]
    return Job.objects.bulk_create(jobs)


def _move(site: Any, jobs: List[Job], *states: str) -> None:
    with site.store.write() as conn:
        for state in states:
            apply_state_changes(conn, [StateChange(int(j.id or 0), state) for j in jobs], strict=False)


def _force(site: Any, jobs: List[Job], state: str) -> None:
    """Put jobs straight into a state (finishing needs a launcher's lease; the bar only reads states)."""
    with site.store.write() as conn:
        conn.executemany("UPDATE job SET state = ? WHERE id = ?", [(state, j.id) for j in jobs])


def test_query_html_shows_first_rows_counts_and_more(site: Any, hello: Any) -> None:
    jobs = _jobs(hello, 25)
    _move(site, jobs[:5], "FAILED")
    out = Job.objects.filter(tags={"batch": "w"})._repr_html_()
    assert "25 matching" in out and "FAILED: 5" in out and "STAGED_IN: 20" in out
    assert out.count("<tr>") == 11  # header + the first 10 rows
    assert "15 more" in out and "w/0" in out and "w/24" not in out
    sliced = Job.objects.filter(tags={"batch": "w"}).order_by("-id")[:3]._repr_html_()
    assert "3 matching" in sliced and "w/24" in sliced and "more" not in sliced
    assert "<b>Job</b>" in jobs[0]._repr_html_() and "say_hello_to" in jobs[0]._repr_html_()
    assert "test-site" in Site.objects.get(name="test-site")._repr_html_()
    assert "1 matching" in Site.objects.all()._repr_html_()
    from balsam.api import App

    assert "Hello" in App.objects.get(name="Hello")._repr_html_() and "source_code" not in App.objects.get(name="Hello")._repr_html_()
    events = EventLog.objects.filter(tags={"batch": "w"})._repr_html_()
    assert "FAILED: 5" in events  # events count by to_state
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5, queue="local", project="local")
    assert "pending_submission" in BatchJob.objects.all()._repr_html_() and "wall_time_min" in bj._repr_html_()


def test_query_html_does_not_load_every_row(site: Any, hello: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _jobs(hello, 30)
    from balsam.db import query as q

    fetched: List[int] = []
    real = q.select

    def counting(*args: Any, **kwargs: Any) -> Any:
        rows = real(*args, **kwargs)
        fetched.append(len(rows))
        return rows

    monkeypatch.setattr(q, "select", counting)
    Job.objects.all()._repr_html_()
    assert fetched and max(fetched) == 10


def test_progress_text_bar_follows_states(site: Any, hello: Any) -> None:
    from balsam.widgets import Progress

    jobs = _jobs(hello, 10)
    out = io.StringIO()
    bar = Progress(jobs, stream=out, notebook=False, width=10)
    assert bar.refresh() == {"done": 0, "failed": 0, "running": 0, "waiting": 10}
    _move(site, jobs[:2], "FAILED")
    _force(site, jobs[2:6], "JOB_FINISHED")
    _force(site, jobs[6:7], "RUNNING")
    assert bar.refresh() == {"done": 4, "failed": 2, "running": 1, "waiting": 3}
    assert bar.text() == "[####!!>...] 4/10 done, 2 failed, 1 running"
    assert out.getvalue().splitlines()[-1] == bar.text()
    assert not bar.finished and not bar.wait(timeout=0.1)


def test_progress_updates_in_the_background(site: Any, hello: Any) -> None:
    from balsam.widgets import Progress

    jobs = _jobs(hello, 4)
    out = io.StringIO()
    bar = Progress(jobs, stream=out, notebook=False, poll_interval=0.05).start()
    _move(site, jobs, "FAILED")
    assert bar.wait(timeout=30)
    bar.stop()
    assert "0/4 done, 4 failed" in out.getvalue()
    assert not any(t.name == "balsam-progress" and t.is_alive() for t in threading.enumerate())


def test_progress_widget_and_as_completed(site: Any, hello: Any, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ipywidgets")
    from balsam.widgets import Progress

    jobs = _jobs(hello, 3)
    bar = Progress(jobs, notebook=True)
    _move(site, jobs[:1], "FAILED")
    bar.refresh()
    bundle = bar._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "0/3 done, 1 failed" in bar.widget.children[0].value and "#d62728" in bar.widget.children[0].value
    _move(site, jobs[1:], "FAILED")
    done = list(Job.objects.as_completed(jobs, timeout=30, progress=True))
    assert len(done) == 3
    assert "0/3 done, 3 failed, 0 running" in capsys.readouterr().err  # outside a kernel: the text bar on stderr


def test_job_browser_filters_pages_and_details(site: Any, hello: Any, adder: Any) -> None:
    pytest.importorskip("ipywidgets")
    from balsam.widgets import JobBrowser

    jobs = _jobs(hello, 25, size="small")
    extra = Job.objects.bulk_create([Job(f"a/{i}", adder, tags={"batch": "w", "size": "big"}, parameters={"x": i}) for i in range(3)])
    _move(site, jobs[:4], "FAILED")
    (jobs[5].workdir_path).mkdir(parents=True, exist_ok=True)
    (jobs[5].workdir_path / "job.out").write_text("".join(f"line {i}\n" for i in range(100)))
    browser = JobBrowser(Job.objects.filter(tags={"batch": "w"}), page_size=10)
    assert browser.total == 28 and len(browser.rows) == 10 and "page 1 of 3" in browser.page_label.value
    assert "application/vnd.jupyter.widget-view+json" in browser._repr_mimebundle_()
    browser.next_button.click()
    assert browser.page == 1 and browser.rows[0].workdir == "w/10"
    browser.state_filter.value = "FAILED"
    assert browser.total == 4 and browser.page == 0 and "w/3" in browser.table.value
    browser.state_filter.value = "(any)"
    browser.app_filter.value = "Adder"
    assert browser.total == 3 and {j.id for j in browser.rows} == {j.id for j in extra}
    browser.app_filter.value = "(any)"
    browser.tag_filter.value = "size:big"
    assert browser.total == 3
    browser.tag_filter.value = ""
    browser.job_select.value = jobs[5].id
    detail = browser.detail.value
    assert f"Job {jobs[5].id}" in detail and "line 99" in detail and "line 69" not in detail  # the tail of job.out
    assert "STAGED_IN" in detail  # its creation event
    browser.tag_filter.value = "nokey:nothing"
    assert browser.total == 0 and "no jobs match" in browser.detail.value
    with pytest.raises(Exception, match="JobBrowser takes a Job query"):
        JobBrowser(EventLog.objects.all())
