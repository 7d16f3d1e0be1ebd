"""Hostile transfer paths with real rsync (on this host, and over a real sshd when .ci/sshd.sh runs): file names
made of shell syntax, quotes, spaces and a leading '-' are copied as the names they are and never run; a remote
path with a NUL, a newline or a '..' is refused when the job is made, in one line; and a local path that leads out
of the job's workdir through a symbolic link fails its item (and job) with the reason, with nothing written or read
through the link. A workdir that is itself a link (to scratch space) still works."""

from __future__ import annotations

import getpass
import shutil
from pathlib import Path
from typing import Any

import pytest

from balsam.api import ApplicationDefinition, Job, TransferItem
from balsam.exceptions import ValidationError
from tests.transfer_support import cycle_until, make_service

needs_rsync = pytest.mark.skipif(not shutil.which("rsync"), reason="rsync is not installed (bash .ci/sshd.sh installs it)")
HOSTILE_NAMES = ["$(touch PWNED)", "`touch PWNED`", "a;touch PWNED", "it's \"quoted\"", "-e sh", "--rsh=touch PWNED", "two  spaces "]


class Fetch(ApplicationDefinition):
    site = "test-site"
    command_template = "true"
    transfers = {
        "deck": {"required": True, "direction": "in", "local_path": "input/deck"},
        "any": {"required": False, "direction": "in", "local_path": "."},
        "result": {"required": False, "direction": "out", "local_path": "out/result"},
    }


@needs_rsync
@pytest.mark.parametrize("over", ["this host", pytest.param("ssh", marks=pytest.mark.sshd)])
def test_file_names_made_of_shell_syntax_are_copied_as_names_and_never_run(site: Any, tmp_path: Path, over: str,
                                                                           request: pytest.FixtureRequest) -> None:
    if over == "ssh":
        service = make_service(site, {"far": f"rsync://{getpass.getuser()}@127.0.0.1"}, rsync_rsh=request.getfixturevalue("sshd_rsh"))
    else:
        service = make_service(site, {"far": "rsync://"})
    Fetch.sync()
    remote = tmp_path / "remote"
    remote.mkdir()
    jobs = []
    for i, name in enumerate(HOSTILE_NAMES):
        (remote / name).write_text(f"deck {i}")
        jobs.append(Fetch.submit(workdir=f"j{i}", transfers={"deck": f"far:{remote}/{name}", "any": f"far:{remote}/{name}"}))
    for job in jobs:
        cycle_until(service, job.id, "STAGED_IN")
    for i, name in enumerate(HOSTILE_NAMES):
        work = site.layout.data / f"j{i}"
        assert (work / "input" / "deck").read_text() == f"deck {i}"
        assert (work / name).read_text() == f"deck {i}"  # the slot without a local path keeps the file's own name
    assert not list(Path(site.layout.root).rglob("PWNED")) and not list(tmp_path.rglob("PWNED"))
    assert not Path("PWNED").exists() and not (Path.home() / "PWNED").exists()


@pytest.mark.parametrize("path, why", [("/in/a\x00b", "control characters"), ("/in/a\nb", "control characters"),
                                       ("/in/../../etc/passwd", "'..'"), ("/in/..", "'..'"), ("relative/x", "absolute")])
def test_a_remote_path_no_file_list_can_hold_is_refused_when_the_job_is_made(site: Any, path: str, why: str) -> None:
    make_service(site, {"far": "rsync://"})
    Fetch.sync()
    with pytest.raises(ValidationError, match=why) as info:
        Fetch.submit(workdir="w", transfers={"deck": f"far:{path}"})
    assert "\n" not in str(info.value).replace(repr(path)[1:-1], "")
    assert Job.objects.count() == 0


@needs_rsync
@pytest.mark.parametrize("url", ["local", "rsync://"])
def test_a_link_out_of_the_workdir_is_never_written_or_read_through(site: Any, tmp_path: Path, url: str) -> None:
    service = make_service(site, {"far": url})
    Fetch.sync()
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "deck").write_text("new deck")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "deck").write_text("a file outside the workdir")
    (elsewhere / "result").write_text("a secret outside the workdir")
    work = site.layout.data / "linked"
    work.mkdir(parents=True)
    (work / "input").symlink_to(elsewhere)  # a link the job's own files could have brought
    stage_in = Fetch.submit(workdir="linked", transfers={"deck": f"far:{remote}/deck"})
    failed = cycle_until(service, stage_in.id, "FAILED")
    assert (elsewhere / "deck").read_text() == "a file outside the workdir"  # not overwritten through the link
    item = TransferItem.objects.get(job_id=failed.id)
    assert item.state == "error" and "out of the job's workdir through a symbolic link" in item.transfer_info["error"]

    out = site.layout.data / "out-link"
    (out / "out").mkdir(parents=True)
    (out / "out" / "result").symlink_to(elsewhere / "result")
    stage_out = Fetch.submit(workdir="out-link", transfers={"deck": f"far:{remote}/deck", "result": f"far:{remote}/sent"})
    cycle_until(service, stage_out.id, "STAGED_IN")
    from tests.helpers import advance

    advance(Job.objects.get(id=stage_out.id), "PREPROCESSED", "RUNNING", "RUN_DONE", "POSTPROCESSED")
    cycle_until(service, stage_out.id, "FAILED")
    assert not (remote / "sent").exists()  # the secret did not leave through the link

    # A workdir that is itself a link (to scratch space) is the job's own folder: it works.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (site.layout.data / "on-scratch").symlink_to(scratch)
    fine = Fetch.submit(workdir="on-scratch", transfers={"deck": f"far:{remote}/deck"})
    cycle_until(service, fine.id, "STAGED_IN")
    assert (scratch / "input" / "deck").read_text() == "new deck"
