"""Job template rendering: the context contract, quoting, strictness and clear errors."""

from __future__ import annotations

import subprocess

import pytest

from balsam.exceptions import ConfigError
from balsam.platforms.templates import BALSAM07_KEYS, CONTEXT_KEYS, format_partition, job_script_context, render_job_script


def context(**overrides):
    base = dict(balsam="python3 /opt/balsam.pyz", site_path="/home/me/my site", batch_job_id=12, job_mode="serial",
                wall_time_min=45, num_nodes=3, project="proj", queue="debug", filter_tags={"run": "a b'c"},
                partitions=[format_partition("mpi", 1), format_partition("serial", 2, {"k": "v"})], optional_params={})  # fmt: skip
    base.update(overrides)
    return job_script_context(**base)


def test_context_has_exactly_the_contract_keys():
    assert sorted(context()) == sorted(CONTEXT_KEYS + BALSAM07_KEYS)


def test_filters_quote_for_the_shell_and_guard_directives():
    text = render_job_script("cd {{ site_path | shquote }}\n#PBS -A {{ project | directive }}\n#PBS -l walltime={{ wall_time_min | hms }}\n", context())
    assert text == "cd '/home/me/my site'\n#PBS -A proj\n#PBS -l walltime=00:45:00\n"
    with pytest.raises(ConfigError, match="line break"):
        render_job_script("#PBS -A {{ project | directive }}", context(project="p\nrm -rf /"))


def test_the_launcher_line_survives_bash():
    template = (
        "{{ balsam }} launcher --batch-job-id {{ batch_job_id }} -j {{ job_mode }} -t {{ wall_time_min }}"
        "{% for k, v in filter_tags.items() %} --tag {{ (k ~ '=' ~ v) | shquote }}{% endfor %}"
        "{% for p in partitions %} -p {{ p | shquote }}{% endfor %}\n"
    )
    line = render_job_script(template, context(balsam="printf '%s\\n'"))
    out = subprocess.run(["bash", "-c", line], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["launcher", "--batch-job-id", "12", "-j", "serial", "-t", "45", "--tag", "run=a b'c", "-p", "mpi:1", "-p", "serial:2:k=v"]


def test_undefined_names_and_syntax_errors_are_config_errors():
    with pytest.raises(ConfigError, match="'wall_time' is undefined"):
        render_job_script("-t {{ wall_time }}", context())
    with pytest.raises(ConfigError, match="syntax error at line 2"):
        render_job_script("ok\n{% for x in %}", context())


@pytest.mark.parametrize(
    "bad, message",
    [({"job_mode": "batch"}, "job_mode must be one of"), ({"num_nodes": 0}, "must be positive"), ({"filter_tags": {"a b": "1"}}, "filter tag name")],
)
def test_context_checks(bad, message):
    with pytest.raises(ConfigError, match=message):
        context(**bad)


def test_partitions():
    assert format_partition("mpi", 4, {"b": "2", "a": "1"}) == "mpi:4:a=1,b=2"
    with pytest.raises(ConfigError):
        format_partition("gpu", 1)
