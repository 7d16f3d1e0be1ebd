"""The Python API in a real Jupyter kernel: apps defined in notebook cells ship and load back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

CELLS = [
    "import os\nfrom balsam.api import ApplicationDefinition, Job, use_site\nuse_site('test-site')",
    "OFFSET = 100\n\ndef shift(v):\n    return v + OFFSET",
    # A class typed into a cell has no source file; its method must still let Balsam find its code.
    "class Shifted(ApplicationDefinition):\n    site = 'test-site'\n\n    def run(self, v: int) -> int:\n        return shift(v)\n",
    "class Echo(ApplicationDefinition):\n    site = 'test-site'\n    command_template = 'echo {{ word }}'\n",
    "jobs = [Shifted.submit(workdir=f'nb/{i}', v=i) for i in range(3)] + [Echo.submit(workdir='nb/echo', word='hi there')]\n"
    "print(sorted(j.workdir for j in Job.objects.filter(workdir__contains='nb/')))",
]


def test_apps_defined_in_notebook_cells(site: Any, balsam_home: Path, tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    env_before = dict(os.environ)
    os.environ["BALSAM_HOME"] = str(balsam_home)
    try:
        client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert "['nb/0', 'nb/1', 'nb/2', 'nb/echo']" in printed, nb.cells[-1].outputs
    from balsam.api import ApplicationDefinition, Job

    shifted = ApplicationDefinition.load_by_name("Shifted", site_name="test-site")
    assert shifted(None).run(5) == 105
    echo = ApplicationDefinition.load_by_name("Echo", site_name="test-site")
    assert echo.render_command(Job.objects.get(workdir="nb/echo").parameters) == "echo 'hi there'"
