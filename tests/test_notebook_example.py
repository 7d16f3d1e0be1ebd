"""examples/analytics.ipynb top to bottom in a real Jupyter kernel: a real site agent, local scheduler and launcher.

Checks what a user sees: the progress and browser cells render as widgets, the query as an HTML table, the
figures are written as PNGs with labelled axes, and the reports agree with what ran.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("ipywidgets")

ROOT = Path(__file__).resolve().parent.parent
WIDGET = "application/vnd.jupyter.widget-view+json"

CHECK = """import json
print("LABELS=" + json.dumps({name: [[ax.get_xlabel(), ax.get_ylabel()] for ax in fig.axes] for name, fig in figs.items()}))
print("COUNTS=" + json.dumps(bar.counts))"""


def _outputs(cell: Any) -> List[Dict[str, Any]]:
    return list(cell.get("outputs", []))


def _mimes(cell: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for o in _outputs(cell):
        out.update(o.get("data", {}))
    return out


def _text(cell: Any) -> str:
    return "".join(o.get("text", "") for o in _outputs(cell))


@pytest.mark.slow
def test_example_notebook_runs_in_a_kernel(balsam_home: Path, tmp_path: Path) -> None:
    nb = nbformat.read(ROOT / "examples" / "analytics.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CHECK))
    env_before = dict(os.environ)
    os.environ.update(BALSAM_HOME=str(balsam_home), BALSAM_DEMO_DIR=str(tmp_path),
                      PYTHONPATH=os.pathsep.join(p for p in [str(ROOT), env_before.get("PYTHONPATH", "")] if p))
    try:
        client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
        from balsam.api import BatchJob

        for bj in BatchJob.objects.filter(site_name="notebook-demo", state=["pending_submission", "queued", "running"]):
            bj.state = "pending_deletion"
            bj.save()
    code = [c for c in nb.cells if c.cell_type == "code"]
    by_source = {c.source.splitlines()[0]: c for c in code}

    progress_cell = next(c for c in code if "bar = progress(jobs)" in c.source)
    assert WIDGET in _mimes(progress_cell), _outputs(progress_cell)
    browser_cell = next(c for c in code if "JobBrowser(" in c.source)
    assert WIDGET in _mimes(browser_cell), _outputs(browser_cell)
    query_cell = next(c for c in code if c.source.endswith("Job.objects.filter(tags=tags)"))
    assert "26 matching" in _mimes(query_cell)["text/html"] and "16 more" in _mimes(query_cell)["text/html"]
    assert "26 jobs done" in _text(next(c for c in code if "as_completed" in c.source))

    analytics_cell = next(c for c in code if "throughput_report(events" in c.source)
    assert "24 jobs finished" in _text(analytics_cell)
    assert "exit code 1" in str(_mimes(analytics_cell).get("text/plain"))  # the two Broken jobs, grouped
    durations_cell = by_source['figs["durations"] = plot_durations(events, group_by="tag:size")']
    assert "<table>" in _mimes(durations_cell)["text/html"] and "short" in _mimes(durations_cell)["text/html"]

    check = _text(code[-1])
    labels = json.loads(check.split("LABELS=")[1].splitlines()[0])
    assert json.loads(check.split("COUNTS=")[1].splitlines()[0]) == {"done": 24, "failed": 2, "running": 0, "waiting": 0}
    assert labels["throughput"][0][1] == "Jobs reaching JOB_FINISHED (cumulative count)" and labels["throughput"][1][1] == "Throughput (jobs/min)"
    assert labels["utilization"][0][1] == "Nodes (weighted by node packing)"
    assert labels["states"][0][1] == "Jobs (count)"
    assert labels["durations"][-1][0] == "Duration (s)"
    for name in ("throughput", "utilization", "states"):
        assert labels[name][0][0].startswith("Time (local")
    for name in ("throughput", "utilization", "states", "durations"):
        png = tmp_path / f"{name}.png"
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    for cell in (by_source['figs = {"throughput": plot_throughput(events, window_s=5)}'], by_source['figs["states"] = plot_states(events)']):
        assert "image/png" in _mimes(cell)  # the returned figure displays inline
