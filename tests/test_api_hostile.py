"""Hostile text straight into the Python API: a NUL character, or a lone surrogate (how Python spells bytes that are
not UTF-8), in a site's name or path, an app's command template or environment. Each raised a plain ValueError or
UnicodeEncodeError from deep inside ``os.stat`` or SQLite (or was stored, to fail when a job ran); each is now a
Balsam error (a ValidationError is also a ValueError) with one line naming what was wrong, and nothing is written.
The CLI turns the same errors into one ``Error:`` line and a non-zero exit."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from balsam.api import ApplicationDefinition, Job, Site, use_site
from balsam.exceptions import AppError, BalsamError, ValidationError
from balsam.site import init_site
from tests.cli_helpers import run_process

NUL = "my\x00site"
SURROGATE = "my\udcffsite"
BAD = pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "surrogate"])


def _one_line(excinfo: Any) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and isinstance(excinfo.value, BalsamError)
    return message


@BAD
@pytest.mark.parametrize("call", [
    lambda bad: use_site(bad),
    lambda bad: use_site(Path("/tmp") / bad),
    lambda bad: Job.objects.filter(site_name=bad).count(),
    lambda bad: Job(workdir="w", app_id="Hello", site_name=bad, parameters={"say_hello_to": "x"}),
    lambda bad: type("Elsewhere", (ApplicationDefinition,), {"site": bad, "command_template": "echo hi"}).sync(),
], ids=["use_site", "use_site_path", "filter_site_name", "job_site_name", "app_site"])
def test_a_site_named_with_hostile_text_is_one_clear_error(site: Any, hello: Any, bad: str, call: Callable[[str], Any]) -> None:
    with pytest.raises(ValidationError) as excinfo:
        call(bad)
    message = _one_line(excinfo)
    assert repr(bad)[1:-1] in message
    assert ("NUL character" in message) if "\x00" in bad else ("not valid Unicode text" in message)
    assert Job.objects.count() == 0 and [s.name for s in Site.objects.all()] == ["test-site"]


@BAD
def test_init_site_at_a_hostile_path_makes_nothing(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        init_site(tmp_path / bad, name="other")
    assert "site path" in _one_line(excinfo)
    assert list(tmp_path.iterdir()) == [] or all(p.name == "home" for p in tmp_path.iterdir())


@BAD
def test_an_app_whose_command_or_environment_no_process_could_get_is_refused_when_defined(site: Any, bad: str) -> None:
    """A NUL cannot be in an argument or an environment variable: such an app was stored, and each of its jobs
    failed at launch. Now it is refused when the class is defined."""
    with pytest.raises(AppError, match="command_template") as excinfo:
        type("Shout", (ApplicationDefinition,), {"site": "test-site", "command_template": f"echo {bad}"})
    _one_line(excinfo)
    with pytest.raises(AppError, match="environment variable 'GREETING'") as excinfo:
        type("Greet", (ApplicationDefinition,), {"site": "test-site", "command_template": "echo $GREETING",
                                                  "environment_variables": {"GREETING": bad}})
    _one_line(excinfo)
    with pytest.raises(AppError, match="must be non-empty and without '='"):
        type("Greet2", (ApplicationDefinition,), {"site": "test-site", "command_template": "echo", "environment_variables": {"A=B": "1"}})
    assert ApplicationDefinition.load_by_site("test-site") == {}


def test_hostile_text_in_job_fields_was_and_is_refused_by_name(site: Any, hello: Any) -> None:
    """What the field validators already refused, for the record: the API's other doors."""
    for bad in (NUL, SURROGATE):
        with pytest.raises(ValidationError, match="workdir"):
            hello.submit(workdir=bad, say_hello_to="x")
        with pytest.raises(ValidationError, match="tag"):
            hello.submit(workdir="w", say_hello_to="x", tags={"k": bad})
    with pytest.raises(ValidationError, match="not valid Unicode"):
        hello.submit(workdir="w", say_hello_to=SURROGATE)
    assert Job.objects.count() == 0


@pytest.mark.parametrize("body, says", [
    ('site = "test\\x00site"\n    command_template = "echo hi"', "contains a NUL character, which no name or path can hold"),
    ('site = "test-site"\n    command_template = "echo \\udcff"', "command_template 'echo \\udcff' is not valid Unicode text"),
], ids=["site", "template"])
def test_the_cli_says_it_in_one_line(site: Any, tmp_path: Path, body: str, says: str) -> None:
    """An apps file (what 'balsam app sync' reads) with such an app: one Error line, a non-zero exit, nothing synced."""
    (tmp_path / "apps.py").write_text(f"from balsam.api import ApplicationDefinition\n\nclass Odd(ApplicationDefinition):\n    {body}\n")
    done = run_process("app", "sync", str(tmp_path / "apps.py"), "--site", "test-site", cwd=tmp_path)
    err = done.stderr.strip()
    assert done.returncode != 0 and err.startswith("Error: ") and "\n" not in err and "Traceback" not in err, err
    assert says in err
    assert ApplicationDefinition.load_by_site("test-site") == {}


def test_db_maintenance_takes_a_site_by_name_and_refuses_hostile_text(site: Any, tmp_path: Path) -> None:
    """balsam.api.maintenance's functions took only the API's internal site reference: check("test-site") was an
    AttributeError ('str' object has no attribute 'is_home')."""
    from balsam.api import maintenance

    assert maintenance.check("test-site").remaining == []
    copy, size = maintenance.backup("test-site", tmp_path)
    assert copy.parent == tmp_path and size > 0 and maintenance.db_size("test-site") > 0
    assert maintenance.vacuum(site.id)[0].endswith("site.db")
    for bad in (NUL, SURROGATE):
        with pytest.raises(ValidationError, match="backup destination"):
            maintenance.backup("test-site", tmp_path / bad)
        with pytest.raises(ValidationError, match="site 'my"):
            maintenance.check(bad)
