"""Shell command templates: a value reaches the program as exactly one argument (or exactly the text the template
quotes it into), whatever the template does around the placeholder; run under real bash (defect 7)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, List

import pytest

from balsam._api.command import JINJA_NAMES, compile_command, template_variables
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
    ("{prog} {{{{ x }}}}#\"{{{{ x }}}}\"", "{v}#{v}"),
    ("{prog} $'it\\'s'{{{{ x }}}}", "it's{v}"),
    ("{prog} {{% for a in [x] %}}\"{{{{ a }}}}\"{{% endfor %}}", "{v}"),
    ("{prog} {{% if x %}}'{{{{ x }}}}'{{% else %}}'{{{{ x }}}}'{{% endif %}}", "{v}"),
    ("[[ -n {{{{ x }}}}x ]] && {prog} {{{{ x }}}}", "{v}"),
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


@pytest.mark.parametrize("template", [
    "echo {% if q %}\"{% endif %}{{ x }}{% if q %}\"{% endif %}",  # quoting that depends on a value
    "echo {% for a in xs %}'{% endfor %}{{ x }}",
    "echo {% if q %}$({% endif %}{{ x }}",
    "echo {% filter replace(\"'\", \"\") %}{{ x }}{% endfilter %}",  # output that skips the quoting
    "{% macro m(v) %}{{ v }}{% endmacro %}echo \"{% call m(x) %}{% endcall %}\"",
    "echo a{% if q %} {% endif %}#\"\n{{ x }}",  # a comment or not, as q says
    "echo ${% if q %}{% endif %}{{ x }}",
    "echo $'{{ x }}'",
])
def test_templates_whose_quoting_a_value_could_change_are_refused(template: str) -> None:
    with pytest.raises(AppError, match="command_template"):
        compile_command(template, "T")


@pytest.mark.parametrize("template,value,expected", [
    ("argv $(( {{ x }} * 2 ))", 21, ["42"]),
    ("argv $(( {{ x }} * 2 ))", "-1.5e0"[:4], None),
    ("(( {{ x }} > 0 )) && argv pos", "3", ["pos"]),
    ("for (( i = 0; i < {{ x }}; i++ )); do argv $i; done", 2, ["0", "1"]),
    ("let n={{ x }}+1; argv $n", 4, ["5"]),
    ("a[{{ x }}]=7; argv ${a[@]}", 0, ["7"]),
    ("declare -i n; n={{ x }}; argv $n", 9, ["9"]),
    ("argv $[ {{ x }} + 1 ]", 1, ["2"]),
    ("[[ {{ x }} -eq 5 ]] && argv five", 5, ["five"]),
    ("argv hi >&{{ x }}", 1, ["hi"]),  # bash expands the word after >& twice when it is not a number
    ("argv hi >& {{ x }}", 1, ["hi"]),
    ("let y=1 >&{{ x }}; argv ok", 1, ["ok"]),  # '&' of '>&' does not end let's words (found by random templates)
    ("! let $ >& {{ x }}\nargv ok", 1, ["ok"]),
    ("argv hi >&\\\n {{ x }}", 1, ["hi"]),  # a line continuation between '>&' and its word
    ("[[x >&{{ x }}; argv hi", 1, ["hi"]),  # '[[x' is a command, not [[: '>&' redirects
])
def test_values_bash_evaluates_as_arithmetic_or_twice_must_be_numbers(tmp_path: Path, template: str, value: Any, expected: Any) -> None:
    """bash evaluates arithmetic after quote removal, so '$(...)' or 'a[$(...)]' in a value would run, quoted or not:
    there a value must be a number (the job fails with the reason otherwise), and numbers work as before."""
    render = compile_command(template, "T")
    if expected is not None:
        assert _argv(render({"x": value}), tmp_path) == expected
    pwned = tmp_path / "pwned"
    with pytest.raises(ValidationError, match="must be a number|cannot contain"):
        render({"x": f"a[$(touch {pwned})]"})
    for hostile in (f"$(touch {pwned})", f"`touch {pwned}`", f"1; touch {pwned}", "1e3", f"a[$(touch {pwned})]"):
        try:
            command = render({"x": hostile})
        except ValidationError as e:
            assert "must be a number" in str(e) or "cannot contain" in str(e)
            continue
        assert "[[" in template  # only there are values that are not numbers passed on (quoted, and without '[')
        subprocess.run(["/bin/bash", "-c", "argv() { :; }\n" + command], cwd=str(tmp_path), capture_output=True, timeout=30)
    assert not pwned.exists()


@pytest.mark.parametrize("template", ["argv ok # with {{ x }}", "# {{ x }}\nargv ok", "argv ok; #{{ x }}'\"$(\nargv ok"])
def test_a_value_in_a_comment_stays_in_it(tmp_path: Path, template: str) -> None:
    """A comment ends at a line break, even one inside quotes the comment holds: a value with one ran its next line."""
    render = compile_command(template, "T")
    pwned = tmp_path / "pwned"
    for value in ("$(touch {p})", "'; touch {p}", "a b"):
        assert set(_argv(render({"x": value.format(p=pwned)}), tmp_path)) == {"ok"}
    for value in ("\ntouch {p}\n", "'\ntouch {p}\n'", "x\r\ntouch {p}"):
        with pytest.raises(ValidationError, match="line break"):
            _argv(render({"x": value.format(p=pwned)}), tmp_path)
    assert not pwned.exists()


def test_refused_at_app_definition_with_advice(site: Any) -> None:
    from balsam.api import ApplicationDefinition

    with pytest.raises(AppError, match="follows a backslash"):
        class Bad(ApplicationDefinition):
            site = "test-site"
            command_template = "echo \\{{ x }}"


SIMPLE = ["true", "argv {{ x }}", "argv {{x}} \"{{ y }}\" '{{ x }}'", "argv {{ true }}", "argv {{ True }} {{ none }}",
          "argv {{ if }} {{ in }}", "argv {{ loop }}"]
"""Templates of plain ``{{ name }}`` placeholders, among them names that mean something else to Jinja."""


@pytest.mark.parametrize("template", SIMPLE)
def test_plain_placeholders_mean_what_jinja_says(tmp_path: Path, template: str) -> None:
    """The parameters of a template read without Jinja are Jinja's, and it renders as Jinja renders it
    (``{{ true }}`` is ``True``, not a parameter; it failed with KeyError('True') at its first job)."""
    import jinja2
    from jinja2 import meta

    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    expected = sorted(meta.find_undeclared_variables(env.parse(template)))
    assert template_variables(template, "T") == expected
    values = {name: f"v-{name}" for name in expected}
    # Plain words as values: Jinja's unquoted text is what the shell would see of Balsam's quoted one.
    assert _argv(compile_command(template, "T")(values), tmp_path) == _argv(env.from_string(template).render(**values), tmp_path)


def test_names_jinja_reads_otherwise_are_known() -> None:
    """Every global a Jinja environment starts with sends its templates through Jinja."""
    from jinja2.defaults import DEFAULT_NAMESPACE

    assert set(DEFAULT_NAMESPACE) <= JINJA_NAMES
    assert template_variables("echo {{ range }} {{ x }} {{ lipsum }}", "T") == ["x"]


def test_defining_an_app_with_plain_placeholders_does_not_load_jinja(tmp_path: Path) -> None:
    """A command (the CLI, a launcher before its first job) that defines a ``{{ name }}`` app does not spend tens
    of milliseconds importing Jinja."""
    code = ("import sys\nfrom balsam._api.command import compile_command, template_variables\n"
            "assert template_variables('echo {{ x }} \"{{ y }}\"', 'T') == ['x', 'y']\n"
            "assert compile_command('echo {{ x }}', 'T')({'x': 'a b'}) == \"echo 'a b'\"\n"
            "print('jinja2' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


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


def test_a_launcher_fails_a_job_whose_value_bash_would_evaluate(site: Any, tmp_path: Path) -> None:
    """`echo $(( {{ n }} * 2 ))` with n = 'a[$(touch ...)]': the job FAILS saying why, and nothing runs."""
    from balsam.api import ApplicationDefinition
    from tests.launcher_support import output, run, runnable

    class Double(ApplicationDefinition):
        site = "test-site"
        command_template = "echo $(( {{ n }} * 2 ))"

    Double.sync()
    pwned = tmp_path / "pwned"
    bad = Double.submit("bad", n=f"a[$(touch {pwned})]")
    good = Double.submit("good", n=21)
    runnable(site.store, [bad, good])
    assert run(site, "mpi") == 0
    assert output(site.path, "good").strip() == "42"
    bad.refresh_from_db()
    assert bad.state == "FAILED"
    assert "must be a number" in site.backend.last_event_message(bad.id)
    assert not pwned.exists()


@pytest.mark.parametrize("template", [
    "x=(( {{ x }} ))\nargv ok", "xesac=(( {{ x }} )else( [[", "fi; argv {{ x }}\nargv ok", "argv ) {{ x }}\nargv ok",
    "case x in ) argv {{ x }}; esac", "argv $( ( {{ x }}",
])
def test_a_syntax_error_before_a_value_never_runs_its_next_line(tmp_path: Path, template: str) -> None:
    """bash goes on with the next line after a syntax error: a value's line break is written as $'\\n', so the next
    line is always the template's own."""
    render = compile_command(template, "T")
    pwned = tmp_path / "pwned"
    for value in ("a\ntouch {p}\n", "\ntouch {p}", "a'\ntouch {p}\n'", "a\"\ntouch {p}\n\"", "a)\ntouch {p}\n", "x\n\ntouch {p} #"):
        command = render({"x": value.format(p=pwned)})
        assert command.count("\n") == template.count("\n")  # every line break is the template's own
        subprocess.run(["/bin/bash", "-c", "argv() { :; }\n" + command], cwd=str(tmp_path), capture_output=True, timeout=30)
    assert not pwned.exists()
    assert _argv(compile_command("argv {{ x }} \"{{ x }}\" '{{ x }}'", "T")({"x": "a\nb\n"}), tmp_path) == ["a\nb\n"] * 3


def test_an_open_subscript_is_one_word_to_bash_not_a_comment(tmp_path: Path) -> None:
    """bash reads 'a[ # ( ]]' as one word up to its ']' (found by random templates): the '#' starts no comment, so
    the value after it is quoted, never passed as it is."""
    pwned = tmp_path / "pwned"
    command = compile_command("a[ # ( ]]  {{ x }}\nargv ok", "T")({"x": f"$(touch {pwned})"})
    assert _argv(command, tmp_path) == ["ok"] and not pwned.exists()


def test_backticks_end_where_bash_ends_them(tmp_path: Path) -> None:
    """bash ends `...` at the next backtick whatever quotes lie between; a value inside backticks is refused (a
    backtick in it would end them)."""
    for template in ("argv `echo {{ x }}`", "argv \"`echo {{ x }}`\"", "argv `# {{ x }}`"):
        with pytest.raises(AppError, match="inside backticks"):
            compile_command(template, "T")
    pwned = tmp_path / "pwned"
    for template in ("argv `echo '` {{ x }}", "argv `printf \"` '{{ x }}'", "argv `echo '\\`'` {{ x }}"):
        render = compile_command(template, "T")
        for value in ("$(touch {p})", "`touch {p}`", "';touch {p};'", "\";touch {p};\""):
            subprocess.run(["/bin/bash", "-c", "argv() { :; }\n" + render({"x": value.format(p=pwned)})], cwd=str(tmp_path),
                           capture_output=True, timeout=30)
    assert not pwned.exists()


_TOKENS = ["echo", "(", ")", "fi", "then", "done", "do", "{", "}", ";", "|", "&&", "'", '"', "$(", "`", "case", "esac", "in",
           "\n", "if", "#", "[[", "]]", " ", "x", "=", "\\", ";;", "((", "))", "while", "for", "f()", "else", "&", ">", "<",
           "let ", ">&", "\\\n", "$((", "a[", "$'", "2>&1", "!"]


@pytest.mark.slow
def test_random_templates_with_hostile_values_run_nothing_under_bash(tmp_path: Path) -> None:
    """1,000 random templates of shell fragments (syntax errors among them) around a placeholder, each rendered with
    hostile values and run under real bash: no value ever runs a command (each would make the file ``pwned``)."""
    import random

    import jinja2

    rnd = random.Random(20261201)
    pwned = tmp_path / "pwned"
    values = [v.format(p=pwned) for v in ("a\ntouch {p}\n", "\ntouch {p}", "a'\ntouch {p}\n'", "a)\ntouch {p}\n", "$(touch {p})",
                                          "`touch {p}`", "';touch {p};'", "\";touch {p};\"", "a;\n\ntouch {p} #")]
    ran = 0
    for _ in range(1000):
        parts = [rnd.choice(_TOKENS) for _ in range(rnd.randint(1, 7))]
        parts.insert(rnd.randint(0, len(parts)), " {{ x }} ")
        template = (" " if rnd.random() < 0.5 else "").join(parts + [rnd.choice(_TOKENS)] * (rnd.random() < 0.5))
        try:
            render = compile_command(template, "T")
        except (AppError, jinja2.TemplateSyntaxError):  # refused when the app is defined
            continue
        for value in values:
            try:
                command = render({"x": value})
            except ValidationError:
                continue
            try:
                subprocess.run(["/bin/bash", "-c", command], cwd=str(tmp_path), capture_output=True, timeout=5,
                               stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                pass
            ran += 1
            assert not pwned.exists(), f"template {template!r} ran a command from the value {value!r}: {command!r}"
    assert ran > 2000  # most templates are taken and run
