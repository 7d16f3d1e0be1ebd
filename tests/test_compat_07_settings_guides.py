"""Balsam 0.7's site guide and elastic queue guide (docs/user-guide/site-config.md, elastic.md), followed as written
against a site made by ``balsam site init``.

The elastic queue guide: "You should find this line uncommented by default: ``elastic_queue: null``. Following this
line is a commented-block showing an example elastic_queue configuration. We want to comment out the
``elastic_queue: null`` line and uncomment the configuration", then ``balsam site sync``. The site guide names
``logging.level`` among the settings to adjust.

What differed and is now fixed: a new site's settings.yml had neither the ``null`` line nor the commented block (nor
those of the queue maintainer or the transfer locations, nor ``logging``), so a user following the guides found
nothing to uncomment. Each preset's example is filled with its own first queue and project, so uncommenting it
gives settings that validate (and, on the local preset, an elastic queue that runs jobs with no BatchJob made by
hand).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from balsam.api import ApplicationDefinition, BatchJob, Job
from balsam.platforms.presets import list_presets
from balsam.settings import load_settings
from balsam.site import init_site
from tests.helpers import end_allocations

SITE = "elastic-site"


def turn_on(text: str, section: str) -> str:
    """What the guide asks of the user, done on the file's text: comment out ``SECTION: null`` (if there is one)
    and uncomment the commented block that starts ``# SECTION:``, up to the next blank line."""
    lines = text.splitlines()
    if f"{section}: null" in lines:
        lines[lines.index(f"{section}: null")] = f"# {section}: null"
    start = lines.index(f"# {section}:")
    end = start
    while end < len(lines) and lines[end].startswith("# "):
        lines[end] = lines[end][2:]
        end += 1
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("preset", list_presets())
def test_each_presets_settings_have_the_services_the_guides_tell_users_to_uncomment(preset: str, tmp_path: Path) -> None:
    init_site(tmp_path / "s", name="s", preset=preset)
    path = tmp_path / "s" / "settings.yml"
    text = path.read_text()
    assert "\nelastic_queue: null\n# elastic_queue:\n" in text and "\nqueue_maintainer: null\n# queue_maintainer:\n" in text
    off = load_settings(path)
    assert off.elastic_queue == [] and off.queue_maintainer is None and off.logging.level == "INFO"

    for section in ("elastic_queue", "queue_maintainer", "transfers"):
        text = turn_on(text, section)
    path.write_text(text)
    on = load_settings(path)
    (eq,) = on.elastic_queue
    queue, policy = next(iter(on.scheduler.allowed_queues.items()))
    assert (eq.queue, eq.max_num_nodes, eq.use_backfill) == (queue, policy.max_nodes, False)
    assert eq.project == (on.scheduler.allowed_projects or ["MyProject"])[0]
    assert on.queue_maintainer is not None and on.queue_maintainer.queue == queue
    assert on.queue_maintainer.wall_time_min == policy.max_wall_time_min
    assert on.transfers.transfer_locations == {"laptop": "rsync://me@my-laptop.example.org"}


def test_sample_settings_print_what_a_new_site_gets(tmp_path: Path) -> None:
    from balsam.site.presets import sample_settings

    init_site(tmp_path / "s", name="s", preset="slurm")
    assert (tmp_path / "s" / "settings.yml").read_text() == sample_settings("slurm")


def balsam(*args: str, cwd: Path) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "balsam", *args], capture_output=True, text=True, timeout=120, cwd=str(cwd))


class Hello(ApplicationDefinition):
    site = SITE
    command_template = "echo Hello, {{ say_hello_to }}!"


@pytest.fixture
def running_site(tmp_path: Path) -> Iterator[Path]:
    """``balsam site init`` + ``balsam site start`` from inside the site; its BatchJobs ended before its agent stops."""
    root = tmp_path / SITE
    assert balsam("site", "init", str(root), "-n", SITE, cwd=tmp_path).returncode == 0
    started = balsam("site", "start", cwd=root)
    assert started.returncode == 0, started.stderr
    try:
        yield root
    finally:
        try:
            end_allocations(SITE)
        finally:
            balsam("site", "stop", cwd=root)


def test_the_elastic_queue_guide_on_a_running_local_site(running_site: Path) -> None:
    path = running_site / "settings.yml"
    text = turn_on(path.read_text(), "elastic_queue")
    # The one value a user would change for a demo: look at the backlog every second, not every minute.
    text = re.sub(r"(\nelastic_queue:\n(?:  .*\n)*?  period_s:) 60", r"\1 1", text)
    path.write_text(text)
    synced = balsam("site", "sync", cwd=running_site)
    assert synced.returncode == 0 and "settings.yml is valid" in synced.stdout, synced.stderr

    Hello.sync()
    job = Hello.submit(workdir="demo/hello", say_hello_to="elastic")
    deadline = time.monotonic() + 120
    while not job.done():  # no 'balsam queue submit': the elastic queue provisions the BatchJob
        assert time.monotonic() < deadline, (job.state, list(BatchJob.objects.all()))
        time.sleep(0.5)
    assert job.state == "JOB_FINISHED"
    assert (running_site / "data" / "demo" / "hello" / "job.out").read_text() == "Hello, elastic!\n"
    made = BatchJob.objects.get(id=Job.objects.get(id=job.id).batch_job_id)
    assert (made.queue, made.project, made.num_nodes, made.job_mode) == ("local", "local", 1, "mpi")
