"""Shell command templates: a value reaches the program as exactly one argument (or exactly the text the template
quotes it into), whatever the template does around the placeholder; run under real bash (defect 7)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, List

import pytest

from balsam._api.command import compile_command
from balsam.exceptions import AppError, ValidationError

HOSTILE = [
    "$(touch {p})", "`touch {p}`", "; touch {p}", "&& touch {p}", "| touch {p}", "\ntouch {p}\n", "'; touch {p}; '",
    "\"; touch {p}; \"", "\"$(touch {p})\"", "'$(touch {p})'", "\\\"; touch {p}; \\\"", "$'\\x27'; touch {p}",
    "${{IFS}}touch${{IFS}}{p}", "a b\tc", "*", "~", "-n", "", " ", "\\", "'", "\"", "\"'\"'", "${{HOME}}", "$((1+1))",
    "!!", "#comment", "ünïcödé ✓ 🎉", "x" * 5000, "a\rb", "<(touch {p})", ">{p}", "{p}", "}} {{{{ x }}}} {{{{",
]
"""Values that try to break out of the quoting (16 classic payloads among them) and values that must survive."""

TEMPLATES = [
    ("{prog} {{{{ x }}}}", "{v}"),
    ("{prog} \"{{{{ x }}}}\"", "{v}"),
    ("{prog} '{{{{ x }}}}'", "{v}"),
    ("{prog} \"--name={{{{ x }}}}.txt\"", "--name={v}.txt"),
    ("{prog} pre'{{{{ x }}}}'post", "pre{v}post"),
    ("{prog} \"a $(printf %s \"{{{{ x }}}}\") b\"", "a {v_sub} b"),
    ("{prog} {{{{ x | upper | lower }}}}", "{v_lower}"),
    ("{prog} \"{{% if x %}}{{{{ x }}}}{{% endif %}}\"", "{v}"),
    ("# it's a comment\n{prog} {{{{ x }}}}", "{v}"),
    ("{prog} $(echo '{{{{ x }}}}')", None),
]

PROG = "argv"
"""A shell function that prints its arguments NUL-separated (the launcher runs commands with bash -c)."""


def _argv(command: str, cwd: Path) -> List[str]:
    script = "argv() { printf '%s\\0' \"$@\"; }\n" + command
    out = subprocess.run(["/bin/bash", "-c", script], cwd=str(cwd), capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return [a.decode() for a in out.stdout.split(b"\0")[:-1]]


@pytest.mark.parametrize("template,expected", TEMPLATES, ids=[f"t{i}" for i in range(len(TEMPLATES))])
def test_hostile_values_stay_one_argument(tmp_path: Path, template: str, expected: Any) -> None:
    render = compile_command(template.format(prog=PROG), "T")
    pwned = tmp_path / "pwned"
    for raw in HOSTILE:
        value = raw.format(p=pwned)
        if expected is None and "\n" in value:
            continue
        argv = _argv(render({"x": value}), tmp_path)
        if expected is not None:
            want = expected.format(v=value, v_lower=value.upper().lower(), v_sub=value.rstrip("\n"))
            assert argv == [want], f"{template!r} with {value!r}"
        assert not pwned.exists(), f"{template!r} with {value!r} ran the payload"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("template", [
    "echo \\{{ x }}", "echo ${{ x }}", "echo \"${{ x }}\"", "echo ${VAR:-{{ x }}}", "cat <<EOF\n{{ x }}\nEOF",
])
def test_placeholders_no_quoting_can_protect_are_refused(template: str) -> None:
    with pytest.raises(AppError, match="command_template"):
        compile_command(template, "T")


def test_refused_at_app_definition_with_advice(site: Any) -> None:
    from balsam.api import ApplicationDefinition

    with pytest.raises(AppError, match="follows a backslash"):
        class Bad(ApplicationDefinition):
            site = "test-site"
            command_template = "echo \\{{ x }}"


def test_nul_in_a_value_is_a_clear_error() -> None:
    with pytest.raises(ValidationError, match="NUL"):
        compile_command("echo {{ x }}", "T")({"x": "a\x00b"})


def test_a_launcher_passes_a_quoted_placeholder_as_one_argument(site: Any, tmp_path: Path) -> None:
    """The 0.7-style template from the report: ``echo "{{ x }}"`` with ``x=$(touch ...)`` runs nothing."""
    from balsam.api import ApplicationDefinition
    from tests.launcher_support import output, run, runnable

    class Echo(ApplicationDefinition):
        site = "test-site"
        command_template = 'echo "{{ x }}"'

    Echo.sync()
    pwned = tmp_path / "pwned"
    job = Echo.submit("e", x=f"$(touch {pwned})")
    runnable(site.store, [job])
    assert run(site, "mpi") == 0
    assert output(site.path, "e").strip() == f"$(touch {pwned})"
    assert not pwned.exists()
