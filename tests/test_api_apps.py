"""ApplicationDefinition: validation at definition, parameters, source shipping, loading back at the site."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from balsam.api import App, ApplicationDefinition, Job
from balsam.exceptions import AppError, ValidationError

BACKENDS = ("local", "http")
"""Every test here runs on the home host and from another host through the agent's HTTP API."""


SCALE = 10
NAMES = ["a", "b"]


def helper(v: int) -> int:
    return v * SCALE


class _Base(ApplicationDefinition):
    site = "test-site"

    def shared(self) -> str:
        return "base"


class Derived(_Base):
    """Uses super(), a module helper, a constant, and an imported module."""

    def run(self, v: int, *, label: str = "x", **extra: Any) -> float:
        return helper(v) + math.floor(0.5) + len(NAMES)

    def shared(self) -> str:
        return "derived+" + super().shared()


def test_shell_app_parameters_come_from_the_template(site: Any) -> None:
    class Greet(ApplicationDefinition):
        site = "test-site"
        command_template = "echo {{ greeting }} {{ name }} > {{ out }}"
        parameters = {"greeting": {"required": False, "default": "hi", "help": "what to say"}}

    assert Greet.parameter_spec() == {
        "greeting": {"required": False, "default": "hi", "help": "what to say"},
        "name": {"required": True, "help": ""},
        "out": {"required": True, "help": ""},
    }
    # Balsam 0.7's class shows every parameter it takes (it showed only those declared: the template's were missing)
    assert Greet.parameters == Greet.parameter_spec()

    class Shout(Greet):  # declares nothing: inherits what Greet declared, not the variables of Greet's template
        command_template = "echo {{ greeting }} {{ who }}"

    assert Shout.parameters == {"greeting": {"required": False, "default": "hi", "help": "what to say"},
                                "who": {"required": True, "help": ""}}
    assert Greet.render_command({"name": "O'Brien; rm -rf /", "out": "o.txt"}) == "echo hi 'O'\"'\"'Brien; rm -rf /' > o.txt"
    with pytest.raises(ValidationError, match="missing required parameter 'out'"):
        Greet.render_command({"name": "x"})


@pytest.mark.parametrize("body,message", [
    ("command_template = 'echo {{ x }}'\n    def run(self): pass", "not both"),
    ("command_template = 'echo {{ x }}'\n    parameters = {'y': {'required': True}}", "'y' is not used by the command_template"),
    ("command_template = 'echo {{ x }'", "command_template line 1"),
    # Balsam 0.7's app guide: "names with '-', for instance, will be rejected" (it said the name was unused)
    ("command_template = 'echo {{ input_file }}'\n    parameters = {'input-file': {'required': True}}",
     "'input-file' is not a valid Python identifier"),
    ("command_template = 'echo {{ x }}'\n    parameters = {'x': {'required': True, 'default': 1}}", "cannot have a default"),
    ("command_template = 'echo {{ x }}'\n    parameters = {'x': {'required': False}}", "needs a default"),
    ("command_template = 'ls'\n    transfers = {'in': {'direction': 'sideways'}}", "direction must be 'in' or 'out'"),
    ("command_template = 'ls'\n    cleanup_files = ['/etc/*']", "must stay inside the job's workdir"),
    ("command_template = 'ls'\n    cleanup_files = ['*.tmp', './']", "pattern './' names no files inside the job's workdir"),
    ("command_template = 'ls'\n    cleanup_files = ['']", "pattern '' names no files"),
])
def test_bad_definitions_fail_when_the_class_is_defined(site: Any, body: str, message: str) -> None:
    with pytest.raises(AppError, match=message):
        exec(f"class Bad(ApplicationDefinition):\n    site = 'test-site'\n    {body}\n", {"ApplicationDefinition": ApplicationDefinition})


def test_python_app_parameters_from_the_signature(site: Any) -> None:
    assert Derived.parameter_spec() == Derived.parameters == {
        "v": {"required": True, "help": "int"},
        "label": {"required": False, "default": "x", "help": "str"},
    }
    Derived.sync()
    assert ApplicationDefinition.load_by_name("Derived").parameters == Derived.parameters
    job = Derived.submit(workdir="d", v=1, anything="else")  # **extra accepts unknown keywords
    assert job.parameters == {"v": 1, "anything": "else"}


def test_sync_upserts_by_name_and_rename(site: Any, hello: Any) -> None:
    first = hello.__app_id__
    assert hello.sync() == first
    assert App.objects.get(name="Hello").version == 2
    assert App.objects.get(name="Hello").description == "Says hello."

    class Hello2(ApplicationDefinition):
        site = "test-site"
        command_template = "echo {{ say_hello_to }}"

    assert Hello2.sync(rename_from="Hello") == first
    assert [a.name for a in App.objects.all()] == ["Hello2"]


def test_shipped_source_recreates_the_class_with_super_helpers_and_constants(site: Any) -> None:
    Derived.sync()
    source = App.objects.get(name="Derived").source_code
    assert "import math" in source and "def helper" in source and "SCALE = 10" in source and "class _Base" in source
    loaded = ApplicationDefinition.load_by_name("Derived", site_name="test-site")
    assert loaded is not Derived
    instance = loaded(None)
    assert instance.run(3) == 32
    assert instance.shared() == "derived+base"


def test_loading_in_a_fresh_interpreter(site: Any, balsam_home: Path) -> None:
    Derived.sync()
    script = textwrap.dedent(f"""
        import json, os
        os.environ["BALSAM_HOME"] = {str(balsam_home)!r}
        from balsam.api import ApplicationDefinition
        apps = ApplicationDefinition.load_by_site("test-site")
        d = apps["Derived"](None)
        print(json.dumps([sorted(apps), d.run(2), d.shared()]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd="/")
    assert json.loads(out.stdout) == [["Derived"], 22, "derived+base"]


def _cell(source: str, ns: dict, name: str) -> None:
    """Run code the way IPython runs a cell: its text lives only in linecache, under a pseudo file name."""
    import linecache

    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    exec(compile(source, name, "exec"), ns)


def test_a_global_that_cannot_be_shipped_is_named_at_sync(site: Any) -> None:
    ns: dict = {"ApplicationDefinition": ApplicationDefinition, "HANDLE": open(__file__), "__name__": "__main__"}
    _cell("class UsesHandle(ApplicationDefinition):\n    site = 'test-site'\n    def run(self):\n        return HANDLE.read()\n", ns, "<cell-7>")
    ns["HANDLE"].close()
    with pytest.raises(AppError, match="uses the global 'HANDLE'"):
        ns["UsesHandle"].sync()


def test_notebook_cell_app_with_methods_and_helpers(site: Any) -> None:
    ns: dict = {"ApplicationDefinition": ApplicationDefinition, "__name__": "__main__"}
    _cell("FACTOR = 3\ndef triple(v):\n    return v * FACTOR\n", ns, "<cell-1>")
    _cell("class InCell(ApplicationDefinition):\n    site = 'test-site'\n    def run(self, v):\n        return triple(v)\n", ns, "<cell-2>")
    ns["InCell"].sync()
    loaded = ApplicationDefinition.load_by_name("InCell", site_name="test-site")
    assert loaded(None).run(2) == 6


def test_method_less_app_needs_no_source_file(site: Any) -> None:
    # Like a class typed into a notebook: exec'd code has no source file to read.
    ns: dict = {"ApplicationDefinition": ApplicationDefinition, "__name__": "__notebook__"}
    exec("class Nb(ApplicationDefinition):\n    site = 'test-site'\n    command_template = 'echo {{ a }}'\n", ns)
    ns["Nb"].sync()
    loaded = ApplicationDefinition.load_by_name("Nb", site_name="test-site")
    assert loaded.render_command({"a": "b c"}) == "echo 'b c'"


def test_resync_is_seen_by_loaders(site: Any) -> None:
    class V(ApplicationDefinition):
        site = "test-site"
        command_template = "echo one {{ x }}"

    V.sync()
    assert ApplicationDefinition.load_by_name("V", site_name="test-site").render_command({"x": 1}) == "echo one 1"

    class V(ApplicationDefinition):  # type: ignore[no-redef]  # the user edits the cell and re-runs it
        site = "test-site"
        command_template = "echo two {{ x }}"

    V.sync()
    assert ApplicationDefinition.load_by_name("V", site_name="test-site").render_command({"x": 1}) == "echo two 1"


def test_hooks_default_and_overrides(site: Any, hello: Any) -> None:
    class Hooked(ApplicationDefinition):
        site = "test-site"
        command_template = "true"

        def handle_timeout(self) -> None:
            self.job.state = "FAILED"

    assert not hello.has_hook("postprocess")
    assert Hooked.has_hook("handle_timeout") and not Hooked.has_hook("preprocess")
    job = hello.submit(workdir="j", say_hello_to="x")
    hooks = hello(job)
    hooks.preprocess()
    assert job.state == "PREPROCESSED"


def test_app_delete_removes_its_jobs(hello: Any) -> None:
    hello.submit(workdir="a", say_hello_to="x")
    App.objects.get(name="Hello").delete()
    assert Job.objects.count() == 0 and App.objects.count() == 0


def _app_for(site_name: str) -> Any:
    class ClosureApp(ApplicationDefinition):
        site = site_name

        def run(self) -> str:
            return "x"

    return ClosureApp


def test_a_local_variable_of_the_defining_function_is_named_at_sync(site: Any) -> None:
    with pytest.raises(AppError, match="uses 'site_name', which the stored app cannot see"):
        _app_for("test-site").sync()


def _resync_in_another_process(balsam_home: Path, template: str) -> None:
    script = textwrap.dedent(f"""
        import os
        os.environ["BALSAM_HOME"] = {str(balsam_home)!r}
        from balsam.api import ApplicationDefinition

        class Hello(ApplicationDefinition):
            site = "test-site"
            command_template = {template!r}

        Hello.sync()
    """)
    subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd="/")


def test_an_app_resynced_by_another_process_is_seen(site: Any, hello: Any, balsam_home: Path) -> None:
    """A long-lived process (a notebook) follows another process's re-sync of an app: it neither saves a job
    missing a newly required parameter nor refuses a newly valid one (defect 4)."""
    Job(workdir="before", app_id="Hello", parameters={"say_hello_to": "x"}).save()  # caches the app
    _resync_in_another_process(balsam_home, "echo {{ say_hello_to }} {{ times }}")
    with pytest.raises(ValidationError, match="times"):
        Job(workdir="missing", app_id="Hello", parameters={"say_hello_to": "x"}).save()
    job = Job(workdir="valid", app_id="Hello", parameters={"say_hello_to": "x", "times": 2})
    job.save()
    assert Job.objects.get(id=job.id).parameters == {"say_hello_to": "x", "times": 2}
    assert Job.objects.count() == 2


def test_insert_jobs_rechecks_parameters_against_the_stored_app(site: Any, hello: Any) -> None:
    """The store's own writer checks parameters too: a door that skips the API's check cannot save a job the app
    would refuse."""
    from balsam.db import jobs as job_db

    app_id = int(hello.__app_id__)
    with pytest.raises(ValidationError, match="needs parameter 'say_hello_to'"):
        with site.store.write() as conn:
            job_db.insert_jobs(conn, [job_db.new_job_row("a", app_id, parameters={})])
    with pytest.raises(ValidationError, match="has no parameter 'bogus'"):
        with site.store.write() as conn:
            job_db.insert_jobs(conn, [job_db.new_job_row("a", app_id, parameters={"say_hello_to": "x", "bogus": 1})])
    assert Job.objects.count() == 0


STDIN_APP = """
import math
from balsam.api import ApplicationDefinition

SCALE = 10

def helper(x):
    return math.sqrt(x) * SCALE

class FromStdin(ApplicationDefinition):
    site = "test-site"

    def run(self, x):
        return {"value": helper(x), "python": list(__import__("sys").version_info[:2])}

FromStdin.sync()
print(FromStdin.__app_id__)
"""


@pytest.mark.parametrize("how", ["stdin", "dash-c"])
def test_apps_defined_without_a_source_file_are_stored_by_value_and_run(site: Any, balsam_home: Path, how: str) -> None:
    """``python - <<EOF`` and ``python -c``: no source file exists, so sync stores the class by value (cloudpickle)
    with its Python version; a launcher loads and runs it, helpers and module constants included."""
    pytest.importorskip("cloudpickle")
    import pickle

    from tests.launcher_support import job_row, run, runnable, states

    env = {**__import__("os").environ, "BALSAM_HOME": str(balsam_home)}
    argv = [sys.executable, "-"] if how == "stdin" else [sys.executable, "-c", STDIN_APP]
    proc = subprocess.run(argv, input=STDIN_APP if how == "stdin" else None, capture_output=True, text=True, env=env, cwd="/")
    assert proc.returncode == 0, proc.stderr
    app = App.objects.get(name="FromStdin")
    assert app.source_code.startswith(f"#!balsam-app cloudpickle-v1 python={sys.version_info[0]}.{sys.version_info[1]}")
    assert json.loads(site.store.execute("SELECT serialized_class FROM app WHERE name='FromStdin'")[0][0])["format"] == "cloudpickle-v1"
    cls = ApplicationDefinition.load_by_name("FromStdin")
    assert cls.__name__ == "FromStdin" and cls(None).run(4) == {"value": 20.0, "python": list(sys.version_info[:2])}
    assert cls.parameters == {"x": {"required": True, "help": ""}}
    job = Job(workdir="stdin/1", app_id=app.id, parameters={"x": 9})
    job.save()
    [job_id] = runnable(site.store, [job])
    assert run(site, "mpi") == 0
    assert states(site.store, [job_id]) == {job_id: "JOB_FINISHED"}  # no postprocess hook: the launcher finishes it
    assert pickle.loads(job_row(site.store, job_id)["serialized_return_value"]) == {"value": 30.0, "python": list(sys.version_info[:2])}


def test_an_app_stored_by_value_is_refused_with_the_reason_on_another_python(site: Any) -> None:
    from balsam._api.appsource import PICKLED_HEADER, load_source

    other = "2.7" if sys.version_info[:2] != (2, 7) else "3.99"
    stored = f"{PICKLED_HEADER}{other} cloudpickle=3.1.1\n# note\nAAAA\n"
    with pytest.raises(AppError, match=rf"defined without a source file on Python {other} .* this node runs Python "
                                       rf"{sys.version_info[0]}\.{sys.version_info[1]} .* launcher.python_exe"):
        load_source(stored, "FromStdin", "_balsam_app_x", ApplicationDefinition)


def test_apps_with_a_source_file_still_ship_readable_source(site: Any) -> None:
    Derived.sync()
    source = App.objects.get(name="Derived").source_code
    assert "class Derived" in source and "cloudpickle" not in source
