"""Jupyter widgets: a live progress bar over jobs and a job browser with filters, paging and a detail pane.

::

    from balsam.widgets import JobBrowser, progress

    bar = progress(jobs)                        # updates in the background while other cells run
    for job in Job.objects.as_completed(jobs, progress=True):
        ...
    JobBrowser(Job.objects.filter(tags={"experiment": "xpcs"}))

ipywidgets is an optional extra (``pip install 'balsam[jupyter]'``); importing this module does not import it.
Outside a notebook, :func:`progress` draws a text bar on stderr instead.
"""

from __future__ import annotations

import html
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TextIO

from balsam._api.base import Query, by_site
from balsam._api.display import table
from balsam.db import analytics as adb
from balsam.db.states import FAILED_STATES, JobState
from balsam.exceptions import BalsamError, ValidationError
from balsam.plotting import MissingExtra

__all__ = ["JobBrowser", "Progress", "in_notebook", "progress"]

_DONE = {JobState.JOB_FINISHED}
_FAILED = FAILED_STATES
_RUNNING = {JobState.RUNNING}
_COLORS = {"done": "#2ca02c", "failed": "#d62728", "running": "#1f77b4"}


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where widgets can show), False in a terminal or script."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _ipywidgets() -> Any:
    try:
        import ipywidgets
    except ImportError:
        raise MissingExtra("widgets need ipywidgets: pip install 'balsam[jupyter]' (or pip install ipywidgets)") from None
    return ipywidgets


class Progress:
    """Live counts of a set of jobs: done (JOB_FINISHED), failed, running, and the rest, as a bar.

    In a notebook the bar is a widget that a background thread updates while other cells run; elsewhere
    it is a line of text on ``stream`` (stderr), redrawn when the counts change. Create it with
    :func:`progress`; ``stop()`` ends the updates, ``wait()`` blocks until every job is done or failed.
    """

    def __init__(self, jobs: Sequence[Any], poll_interval: float = 1.0, notebook: Optional[bool] = None,
                 stream: Optional[TextIO] = None, width: int = 40) -> None:
        self.jobs = list(jobs)
        for job in self.jobs:
            if getattr(job, "_is_new", True):
                raise ValidationError("save the jobs before following their progress")
        self.poll_interval = poll_interval
        self.notebook = in_notebook() if notebook is None else notebook
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.counts: Dict[str, int] = {"done": 0, "failed": 0, "running": 0, "waiting": len(self.jobs)}
        self._groups = [(site, [int(j.id or 0) for j in group]) for site, group in by_site(self.jobs)]
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._last_text = ""
        self.widget: Any = None
        if self.notebook:
            w = _ipywidgets()
            self._html = w.HTML()
            self.widget = w.VBox([self._html])

    @property
    def total(self) -> int:
        """How many jobs are followed."""
        return len(self.jobs)

    @property
    def finished(self) -> bool:
        """True when every job is done or failed."""
        return self.counts["done"] + self.counts["failed"] >= self.total

    def refresh(self) -> Dict[str, int]:
        """Read the jobs' states now (one grouped count per site) and redraw; returns the counts."""
        by_state: Dict[str, int] = {}
        for site, ids in self._groups:
            for state, n in adb.state_counts(site.store.conn, ids).items():
                by_state[state] = by_state.get(state, 0) + n
        done = sum(n for s, n in by_state.items() if s in _DONE)
        failed = sum(n for s, n in by_state.items() if s in _FAILED)
        running = sum(n for s, n in by_state.items() if s in _RUNNING)
        self.counts = {"done": done, "failed": failed, "running": running, "waiting": max(self.total - done - failed - running, 0)}
        self._draw()
        return dict(self.counts)

    def text(self) -> str:
        """The bar as one line: ``#`` done, ``!`` failed, ``>`` running, ``.`` waiting, then the counts."""
        c, total = self.counts, max(self.total, 1)
        cells = [int(round(self.width * c[k] / total)) for k in ("done", "failed", "running")]
        bar = "#" * cells[0] + "!" * cells[1] + ">" * cells[2]
        bar = (bar + "." * self.width)[: self.width]
        return f"[{bar}] {c['done']}/{self.total} done, {c['failed']} failed, {c['running']} running"

    def html(self) -> str:
        """The bar as HTML: green done, red failed, blue running, grey waiting, then the counts."""
        c, total = self.counts, max(self.total, 1)
        segs = "".join(
            f'<div style="width:{100 * c[k] / total:.2f}%;background:{_COLORS[k]}"></div>' for k in ("done", "failed", "running") if c[k]
        )
        bar = f'<div style="display:flex;height:14px;width:420px;background:#ddd;border-radius:3px;overflow:hidden">{segs}</div>'
        return f"<div>{bar}<span>{html.escape(self.text().split('] ', 1)[1])}</span></div>"

    def _draw(self) -> None:
        if self.widget is not None:
            self._html.value = self.html()
            return
        line = self.text()
        if line != self._last_text:
            self._last_text = line
            end = "" if getattr(self.stream, "isatty", lambda: False)() else "\n"
            self.stream.write(("\r" if end == "" else "") + line + end)
            self.stream.flush()

    def start(self) -> "Progress":
        """Update in a background thread every ``poll_interval`` seconds until all jobs finish or ``stop()``."""
        self.refresh()
        if self._thread is None and not self.finished:
            self._thread = threading.Thread(target=self._loop, name="balsam-progress", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.refresh()
            except BalsamError:
                continue
            if self.finished:
                break
        self._finish_text()

    def _finish_text(self) -> None:
        if self.widget is None and getattr(self.stream, "isatty", lambda: False)():
            self.stream.write("\n")
            self.stream.flush()

    def stop(self) -> None:
        """Stop updating (after one last refresh)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self._thread = None
        self.refresh()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until every job is done or failed (True), or ``timeout`` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.refresh()
            if self.finished:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(min(self.poll_interval, 0.5))

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Dict[str, Any]:
        if self.widget is not None:
            return dict(self.widget._repr_mimebundle_(include=include, exclude=exclude))
        return {"text/plain": self.text(), "text/html": self.html()}

    def __repr__(self) -> str:
        return f"<Progress {self.text()}>"


def progress(jobs: Sequence[Any], poll_interval: float = 1.0, display: bool = True) -> Progress:
    """Show a live progress bar (done, failed, running) for ``jobs`` and keep it updated in the background.

    In a notebook the bar appears below the cell (with ``display``) and keeps updating while other cells
    run; in a terminal it is redrawn on stderr. Returns the :class:`Progress` (``.stop()``, ``.wait()``).

    >>> bar = progress(Job.objects.filter(tags={"exp": "a"}))
    """
    bar = Progress(list(jobs), poll_interval=poll_interval)
    if display and bar.widget is not None:
        from IPython.display import display as _display

        _display(bar.widget)  # type: ignore[no-untyped-call]
    return bar.start()


def _tail(path: Path, max_lines: int = 30, max_bytes: int = 16384) -> str:
    """The last lines of a file (reading at most its last ``max_bytes``); '' if it does not exist."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(size - max_bytes, 0))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-max_lines:])


class JobBrowser:
    """A table of the jobs of a query, with state, tag and app filters, paging and a detail pane.

    Choose a job in the "job" dropdown to see its fields, its events and the tail of its ``job.out``.
    Filters narrow ``query`` (tags as ``key:value``, comma-separated); each page is one query of
    ``page_size`` rows, so browsing a million jobs loads one page at a time.

    >>> JobBrowser(Job.objects.filter(tags={"exp": "a"}), page_size=25)
    """

    def __init__(self, query: Any, page_size: int = 20) -> None:
        if not isinstance(query, Query) or query._model.__name__ != "Job":
            raise ValidationError("JobBrowser takes a Job query, e.g. JobBrowser(Job.objects.filter(tags={'exp': 'a'}))")
        if page_size < 1:
            raise ValidationError(f"page_size must be at least 1, got {page_size}")
        w = _ipywidgets()
        from balsam._api.models import App

        self.query = query
        self.page_size = page_size
        self.page = 0
        self.total = 0
        self.rows: List[Any] = []
        self._app_names = {(a.site_id, a.id): a.name for a in App.objects.all()}
        apps = sorted(set(self._app_names.values()))
        self.state_filter = w.Dropdown(options=["(any)"] + [s.value for s in JobState], value="(any)", description="state")
        self.app_filter = w.Dropdown(options=["(any)"] + apps, value="(any)", description="app")
        self.tag_filter = w.Text(value="", placeholder="key:value, ...", description="tags", continuous_update=False)
        self.prev_button = w.Button(description="◀ prev", layout=w.Layout(width="80px"))
        self.next_button = w.Button(description="next ▶", layout=w.Layout(width="80px"))
        self.page_label = w.HTML()
        self.table = w.HTML()
        self.job_select = w.Dropdown(options=[], description="job")
        self.detail = w.HTML()
        self.message = w.HTML()
        for control in (self.state_filter, self.app_filter, self.tag_filter):
            control.observe(lambda _change: self._filters_changed(), names="value")
        self.prev_button.on_click(lambda _b: self.show_page(self.page - 1))
        self.next_button.on_click(lambda _b: self.show_page(self.page + 1))
        self.job_select.observe(lambda change: self.show_job(change["new"]), names="value")
        self.widget = w.VBox([
            w.HBox([self.state_filter, self.app_filter, self.tag_filter]),
            w.HBox([self.prev_button, self.next_button, self.page_label]),
            self.message, self.table, self.job_select, self.detail,
        ])
        self.show_page(0)

    def filtered(self) -> Query[Any]:
        """The query narrowed by the current filters."""
        query = self.query
        if self.state_filter.value != "(any)":
            query = query.filter(state=self.state_filter.value)
        if self.app_filter.value != "(any)":
            query = query.filter(app_name=self.app_filter.value)
        tags = [t.strip() for t in str(self.tag_filter.value).split(",") if t.strip()]
        if tags:
            query = query.filter(tags=tags)
        return query

    def _filters_changed(self) -> None:
        self.show_page(0)

    def show_page(self, page: int) -> None:
        """Load page ``page`` (0-based, clamped) of the filtered jobs into the table."""
        try:
            query = self.filtered()
            self.total = query.count()
        except BalsamError as exc:
            self.message.value = f'<span style="color:#d62728">{html.escape(str(exc))}</span>'
            return
        self.message.value = ""
        pages = max((self.total + self.page_size - 1) // self.page_size, 1)
        self.page = min(max(page, 0), pages - 1)
        lo = self.page * self.page_size
        self.rows = list(query[lo : lo + self.page_size])
        self.page_label.value = (f"page {self.page + 1} of {pages} &nbsp; jobs {lo + 1 if self.rows else 0}-{lo + len(self.rows)} "
                                 f"of {self.total:,}")
        self.prev_button.disabled = self.page == 0
        self.next_button.disabled = self.page >= pages - 1
        self.table.value = table(["id", "workdir", "state", "app", "tags", "last update"],
                                 [[j.id, j.workdir, j.state, self._app_name(j), ", ".join(f"{k}:{v}" for k, v in j.tags.items()), j.last_update]
                                  for j in self.rows])
        options = [(f"{j.id}: {j.workdir}", j.id) for j in self.rows]
        self.job_select.options = options
        self.job_select.value = options[0][1] if options else None
        if not options:
            self.detail.value = "<i>no jobs match</i>"

    def show_job(self, job_id: Optional[int]) -> None:
        """Fill the detail pane with one job of the page: fields, events, and the tail of job.out."""
        job = next((j for j in self.rows if j.id == job_id), None)
        if job is None:
            self.detail.value = ""
            return
        from balsam._api.models import EventLog

        events = list(EventLog.objects.filter(job_id=job.id, site_id=job.site_id).order_by("timestamp")[:200])
        fields = [("state", job.state), ("workdir", job.workdir), ("app", self._app_name(job)), ("tags", job.tags),
                  ("parameters", job.parameters), ("num_nodes", job.num_nodes), ("return_code", job.return_code)]
        out = _tail(job.workdir_path / "job.out")
        self.detail.value = (
            f"<h4>Job {job.id}</h4>{table(['field', 'value'], fields)}"
            f"<h4>Events</h4>{table(['time', 'from', 'to', 'data'], [[e.timestamp, e.from_state, e.to_state, e.data or ''] for e in events])}"
            f"<h4>job.out (last lines)</h4><pre style='max-height:300px;overflow:auto'>{html.escape(out) or '<i>(empty or not written yet)</i>'}</pre>"
        )

    def _app_name(self, job: Any) -> str:
        return str(self._app_names.get((job.site_id, job.app_id), job.app_id))

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Dict[str, Any]:
        return dict(self.widget._repr_mimebundle_(include=include, exclude=exclude))
