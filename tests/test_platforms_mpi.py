"""MPI launch lines: exact argv per launcher, every line run by real bash against fake launchers that record
what they receive, and (marked ``mpi``/``slurm``) real 2-rank runs through MPICH, Open MPI and srun."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess

import pytest

from balsam.exceptions import ConfigError, LauncherError
from balsam.platforms.mpi import LaunchSpec, get_mpi_launcher, launcher_names, mpi_flavor
from balsam.platforms.mpi.base import bind_lists, param_args
from tests.platforms_support import env_with_path, make_recorder, mpi_venv_python, read_calls, slurm_status

APP = ["python3", "app.py", "--msg", "hello world", "$NOT_EXPANDED"]
SPEC = LaunchSpec(
    APP, num_ranks=8, ranks_per_node=4, threads_per_rank=4, threads_per_core=2, cpu_bind="depth", gpus_per_rank=1,
    hosts=["nid00010", "nid00011"], env={"OMP_NUM_THREADS": "4", "TAGS": "a,b c"}, launch_params={"--extra": "1"},
)  # fmt: skip

EXPECTED = {
    "mpiexec": ["mpiexec", "-n", "8", "-ppn", "4", "-hosts", "nid00010,nid00011", "-bind-to", "core:2",
                "-genv", "OMP_NUM_THREADS", "4", "-genv", "TAGS", "a,b c", "--extra", "1", *APP],
    "pals": ["mpiexec", "-n", "8", "--ppn", "4", "--hosts", "nid00010,nid00011", "--depth", "4", "--cpu-bind", "depth",
             "--env", "OMP_NUM_THREADS=4", "--env", "TAGS=a,b c", "--extra", "1", *APP],
    "mpirun": ["mpirun", "-n", "8", "--map-by", "ppr:4:node:PE=2", "--bind-to", "core", "--host", "nid00010:4,nid00011:4",
               "-x", "OMP_NUM_THREADS=4", "-x", "TAGS=a,b c", "--extra", "1", *APP],
    "srun": ["srun", "-n", "8", "--ntasks-per-node", "4", "-N", "2", "--nodelist", "nid00010,nid00011", "--cpus-per-task", "4",
             "--cpu-bind=cores", "--gpus-per-task", "1", "--extra", "1", *APP],
    "aprun": ["aprun", "-n", "8", "-N", "4", "-d", "4", "-j", "2", "-cc", "depth", "-L", "10,11",
              "-e", "OMP_NUM_THREADS=4", "-e", "TAGS=a,b c", "--extra", "1", *APP],
    "jsrun": ["jsrun", "--nrs", "8", "--tasks_per_rs", "1", "--rs_per_host", "4", "--cpu_per_rs", "2", "--gpu_per_rs", "1",
              "--bind", "packed:2", "-E", "OMP_NUM_THREADS=4", "-E", "TAGS=a,b c", "--extra", "1", *APP],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_argv_is_exact(name):
    command = get_mpi_launcher(name).render(SPEC)
    assert command.argv == EXPECTED[name]
    assert command.env == ({"OMP_NUM_THREADS": "4", "TAGS": "a,b c"} if name == "srun" else {})


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_line_reaches_a_fake_launcher_intact_through_bash(tmp_path, name):
    log = tmp_path / "calls.jsonl"
    command = get_mpi_launcher(name).render(SPEC)
    make_recorder(tmp_path / "bin", command.argv[0], log, watch=["OMP_NUM_THREADS", "TAGS"])
    line = " ".join(shlex.quote(a) for a in command.argv)  # how a launcher writes it into a script or runs it
    subprocess.run(["bash", "-c", line], env=env_with_path(tmp_path / "bin", command.env), check=True, timeout=30)
    (call,) = read_calls(log)
    assert call["argv"] == command.argv[1:]
    if name == "srun":  # srun forwards its own environment to the tasks
        assert call["env"] == {"OMP_NUM_THREADS": "4", "TAGS": "a,b c"}


def test_the_mpirun_root_and_oversubscribe_options():
    spec = LaunchSpec(["true"], num_ranks=2, ranks_per_node=2)
    argv = get_mpi_launcher("mpirun", "mpirun.openmpi", allow_run_as_root="true", oversubscribe="yes").render(spec).argv
    assert argv[0] == "mpirun.openmpi" and "--allow-run-as-root" in argv and "--oversubscribe" in argv
    assert "--allow-run-as-root" not in get_mpi_launcher("mpirun").render(spec).argv
    with pytest.raises(ConfigError, match="expected true or false"):
        get_mpi_launcher("mpirun", oversubscribe="maybe").render(spec)


@pytest.mark.parametrize(
    "bind, expect",
    [
        ("none", {"mpiexec": ["-bind-to", "none"], "srun": ["--cpu-bind=none"], "aprun": ["-cc", "none"]}),
        ("list:0-1:4,5", {"mpiexec": ["-bind-to", "user:0+1,4+5"], "srun": ["--cpu-bind=mask_cpu:0x3,0x30"],
                          "aprun": ["-cc", "0,1:4,5"], "pals": ["--cpu-bind", "list:0-1:4,5"]}),
        ("core", {"mpirun": ["--bind-to", "core"], "jsrun": ["--bind", "packed:2"]}),
    ],
)  # fmt: skip
def test_cpu_binding_translations(bind, expect):
    spec = LaunchSpec(["a"], num_ranks=2, ranks_per_node=2, threads_per_rank=2, cpu_bind=bind)
    for name, flags in expect.items():
        argv = get_mpi_launcher(name).render(spec).argv
        joined = " ".join(argv)
        assert " ".join(flags) in joined, (name, argv)


def test_bind_lists_and_param_args():
    assert bind_lists("list:0-2,7:3") == [[0, 1, 2, 7], [3]]
    assert param_args({"--overlap": "", "x": "1", "mem-bind": "local"}) == ["--overlap", "-x", "1", "--mem-bind", "local"]


@pytest.mark.parametrize(
    "spec, message",
    [
        (LaunchSpec([]), "empty command"),
        (LaunchSpec(["a"], num_ranks=0), "num_ranks must be at least 1"),
        (LaunchSpec(["a"], num_ranks=9, ranks_per_node=4, hosts=["h1", "h2"]), "do not fit"),
        (LaunchSpec(["a"], cpu_bind="sideways"), "unknown cpu_bind"),
        (LaunchSpec(["a"], env={"BAD-NAME": "1"}), "invalid environment variable"),
        (LaunchSpec(["a"], gpus_per_rank=1.5), "must be whole"),
    ],
)
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(LauncherError, match=message):
        get_mpi_launcher("srun").render(spec)


def test_aprun_needs_cray_node_ids_and_local_runs_one_rank():
    with pytest.raises(LauncherError, match="not a Cray node id"):
        get_mpi_launcher("aprun").render(LaunchSpec(["a"], hosts=["login1"]))
    assert get_mpi_launcher("local").render(LaunchSpec(["a", "b"], env={"X": "1"})).argv == ["a", "b"]
    with pytest.raises(LauncherError, match="one rank"):
        get_mpi_launcher("local").render(LaunchSpec(["a"], num_ranks=2, ranks_per_node=2))


def test_registry_and_flavor_detection():
    assert launcher_names() == ["aprun", "jsrun", "local", "mpiexec", "mpirun", "pals", "srun"]
    with pytest.raises(ConfigError, match="unknown MPI launcher"):
        get_mpi_launcher("poe")
    with pytest.raises(ConfigError, match="unknown option"):
        get_mpi_launcher("srun", oversubscribe="true")
    assert mpi_flavor("HYDRA build details:\n    Version: 4.0.2") == "mpiexec"
    assert mpi_flavor("mpiexec (OpenRTE) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/") == "mpirun"
    assert mpi_flavor("something else") is None


# -- real MPI -----------------------------------------------------------------------------------------------

PROGRAM = """
import os
try:
    from mpi4py import MPI
    c = MPI.COMM_WORLD
    total = c.allreduce(c.Get_rank())
    if c.Get_rank() == 0:
        print("size=%d sum=%d var=%s" % (c.Get_size(), total, os.environ.get("BALSAM_TEST_VAR")))
except ImportError:
    rank = os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK")
    os.write(1, ("rank=%s var=%s\\n" % (rank, os.environ.get("BALSAM_TEST_VAR"))).encode())  # one write: ranks don't interleave
"""


def run_real(argv, extra_env=None):
    env = dict(os.environ)
    env.update(extra_env or {})
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)


def check_two_ranks(out):
    if "size=" in out:
        assert out.strip() == "size=2 sum=1 var=a b,c"
    else:
        assert sorted(out.split()) == sorted(["rank=0", "rank=1", "var=a", "var=a", "b,c", "b,c"])


@pytest.mark.mpi
@pytest.mark.skipif(not shutil.which("mpiexec.mpich"), reason="MPICH is not installed (run: bash .ci/mpi.sh)")
def test_real_two_rank_run_with_mpich(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text(PROGRAM)
    python = mpi_venv_python() or "python3"
    spec = LaunchSpec([python, str(prog)], num_ranks=2, ranks_per_node=2, hosts=[socket.gethostname()],
                      cpu_bind="none", env={"BALSAM_TEST_VAR": "a b,c"})  # fmt: skip
    command = get_mpi_launcher("mpiexec", "mpiexec.mpich").render(spec)
    shim = {"MPI4PY_LIBMPI": "libmpi.so.12", "LD_LIBRARY_PATH": "/usr/local/lib/mpich-abi"}  # .ci/mpi.sh's ABI shim
    result = run_real(command.argv, {**command.env, **shim})
    assert result.returncode == 0, result.stderr
    check_two_ranks(result.stdout)


@pytest.mark.mpi
@pytest.mark.skipif(not shutil.which("mpirun.openmpi"), reason="Open MPI is not installed (run: bash .ci/mpi.sh)")
def test_real_two_rank_run_with_open_mpi(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text(PROGRAM)
    python = mpi_venv_python() or "python3"
    spec = LaunchSpec([python, str(prog)], num_ranks=2, ranks_per_node=2, hosts=[socket.gethostname()],
                      cpu_bind="none", env={"BALSAM_TEST_VAR": "a b,c"})  # fmt: skip
    launcher = get_mpi_launcher("mpirun", "mpirun.openmpi", allow_run_as_root=str(os.geteuid() == 0), oversubscribe="true")
    result = run_real(launcher.render(spec).argv)
    assert result.returncode == 0, result.stderr
    check_two_ranks(result.stdout)


slurm_up, slurm_why = slurm_status()


@pytest.mark.slurm
@pytest.mark.skipif(not slurm_up, reason=slurm_why)
def test_real_srun_line_runs_two_tasks():
    host = subprocess.run(["sinfo", "-h", "-o", "%n"], capture_output=True, text=True).stdout.split()[0]
    spec = LaunchSpec(["bash", "-c", 'echo "$SLURM_PROCID $BALSAM_TEST_VAR"'], num_ranks=2, ranks_per_node=2,
                      hosts=[host], env={"BALSAM_TEST_VAR": "a b,c"})  # fmt: skip
    command = get_mpi_launcher("srun").render(spec)
    result = run_real(command.argv, command.env)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == ["0 a b,c", "1 a b,c"]
