"""From jobs to tasks: command rendering (the fast path agrees with the app's own), which commands skip the
shell, output tails, partition specs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from balsam.exceptions import ConfigError, ValidationError
from balsam.launcher.partitions import parse_partition, parse_tags, split_nodes
from balsam.launcher.spawn import simple_argv, tail_lines
from balsam.launcher.tasks import AppInfo
from balsam.platforms.nodes import ComputeNode


@pytest.mark.parametrize("template", [
    "echo Hello, {{ name }}!",
    "{{name}} --x={{ other }}\n",
    "  run {{ name }} {{ name }}  ",
    'echo "{{ name }}" \'{{ other }}\'',
])
def test_fast_renderer_matches_jinja(template: str) -> None:
    from balsam._api.command import _fast, _jinja_env, _rewrite

    render = _fast(template, "app")
    assert render is not None
    values = {"name": "'a b'", "other": "$HOME"}
    expected = _jinja_env().from_string(_rewrite(template, "app")).render(**values).strip()
    assert render(values) == expected


@pytest.mark.parametrize("template", ["{% if x %}a{% endif %}", "{{ x | upper }}", "{{ x }}{# c #}"])
def test_templates_with_jinja_logic_use_jinja(template: str) -> None:
    from balsam._api.command import _fast

    assert _fast(template, "app") is None


def test_app_render_quotes_and_checks_parameters(site: Any) -> None:
    from balsam.api import ApplicationDefinition

    class Greet(ApplicationDefinition):
        site = "test-site"
        command_template = "echo {{ greeting }} {{ name }}"
        parameters = {"greeting": {"required": False, "default": "hi"}}

    Greet.sync()
    row = site.store.execute("SELECT id, name, kind, source_code, version FROM app WHERE name='Greet'")[0]
    info = AppInfo(dict(zip(("id", "name", "kind", "source_code", "version"), row)), site.id)
    assert info.render({"name": "x; rm -rf /"}) == "echo hi 'x; rm -rf /'" == Greet.render_command({"name": "x; rm -rf /"})
    with pytest.raises(ValidationError, match="name"):
        info.render({})


def test_simple_commands_skip_the_shell() -> None:
    env = {"PATH": os.environ["PATH"]}
    assert simple_argv("true", env) == ["true"]
    assert simple_argv("echo 'a b' c=d", env) == ["echo", "a b", "c=d"]
    assert simple_argv("./a.out -n 4", env) == ["./a.out", "-n", "4"]
    for needs_shell in ("echo $HOME", "a | b", "cd x && y", "echo *", "FOO=1 env", "echo 'unbalanced", "echo a\necho b",
                        "exit 3", "echo \"q\"", "no-such-program-xyz 1"):
        assert simple_argv(needs_shell, env) is None, needs_shell


def test_tail_lines(tmp_path: Path) -> None:
    f = tmp_path / "job.out"
    f.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail_lines(str(f), 3) == "line 97\nline 98\nline 99"
    assert tail_lines(str(tmp_path / "missing"), 3) == ""


def test_partition_specs() -> None:
    p = parse_partition("serial:6:role=worker,x=1")
    assert (p.job_mode, p.num_nodes, p.filter_tags) == ("serial", 6, {"role": "worker", "x": "1"})
    assert parse_partition("mpi:2:role=a:k=v").filter_tags == {"role": "a", "k": "v"}
    assert parse_partition("mpi:1").filter_tags == {}
    for bad in ("mpi", "gpu:1", "mpi:0", "mpi:x", "mpi:1:novalue"):
        with pytest.raises(ConfigError):
            parse_partition(bad)
    nodes = [ComputeNode(f"n{i}", (0,), ()) for i in range(3)]
    assert [[n.hostname for n in s] for s in split_nodes([parse_partition("mpi:1"), parse_partition("serial:2")], nodes)] == [
        ["n0"], ["n1", "n2"]]
    with pytest.raises(ConfigError, match="4 nodes"):
        split_nodes([parse_partition("mpi:4")], nodes)
    assert parse_tags(["a=1", "b = 2"]) == {"a": "1", "b": "2"}
