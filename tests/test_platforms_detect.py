"""The node finds out for itself which MPI it has and which GPUs: fake ``mpiexec`` / ``nvidia-smi`` programs on
PATH (with the output real ones print), and the real Open MPI and MPICH where .ci/mpi.sh installed them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Dict

import pytest

from balsam.platforms.mpi import LaunchSpec, get_mpi_launcher
from balsam.platforms.mpi.detect import check_named_launcher, detect_mpi, resolve_mpi
from balsam.platforms.nodes.gpus import detect_gpus
from balsam.settings import LauncherSettings
from balsam.site.hardware import resolve_launcher_settings

OPENMPI = "mpirun (Open MPI) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/\n"
HYDRA = "HYDRA build details:\n    Version:                                 4.0.2\n    Release Date: Thu Apr  7 2022\n"
INTEL = "Intel(R) MPI Library for Linux* OS, Version 2021.10 Build 20230619 (id: c2e19c2f3e)\nCopyright 2003-2023, Intel Corporation.\n"
NVIDIA = "GPU 0: NVIDIA H200 (UUID: GPU-1d2e)\nGPU 1: NVIDIA H200 (UUID: GPU-7f3a)\n  MIG 1g.18gb     Device  0: (UUID: MIG-aa)\n"
ROCM = "============================ ROCm System Management Interface ============================\n" \
       "GPU[0]\t\t: Device ID: 0x740c\nGPU[1]\t\t: Device ID: 0x740c\nGPU[1]\t\t: Device Rev: 0x01\n"
AMD = "GPU: 0\n    BDF: 0000:c1:00.0\n    UUID: 1\nGPU: 1\n    BDF: 0000:c6:00.0\n"
XPU = "+-----------+------------------------------------------+\n| Device ID | Device Information |\n" \
      "| 0         | Device Name: Intel(R) Data Center GPU Max 1550 |\n| 1         | Device Name: Intel(R) Data Center GPU Max 1550 |\n"


def fake_bin(tmp_path: Path, programs: Dict[str, str]) -> Dict[str, str]:
    """A directory of programs printing the given text; returns an env whose PATH has only it and /bin."""
    d = tmp_path / "bin"
    d.mkdir(parents=True, exist_ok=True)
    for name, text in programs.items():
        (d / f"{name}.txt").write_text(text)
        exe = d / name
        exe.write_text(f"#!/bin/sh\ncat '{d / name}.txt'\n")
        exe.chmod(0o755)
    return {"PATH": f"{d}:/bin:/usr/bin", "HOME": str(tmp_path)}


def isolated(tmp_path: Path, programs: Dict[str, str]) -> Dict[str, str]:
    """Like fake_bin, but nothing else on PATH (no real mpiexec or nvidia-smi)."""
    env = fake_bin(tmp_path, programs)
    env["PATH"] = str(tmp_path / "bin")
    (tmp_path / "bin" / "cat").symlink_to(shutil.which("cat") or "/bin/cat")
    return env


@pytest.mark.parametrize("text, launcher, described", [
    (OPENMPI, "mpirun", "Open MPI 4.1.4"),
    (HYDRA, "mpiexec", "MPICH Hydra 4.0.2"),
    (INTEL, "mpiexec", "Intel(R) MPI Library for Linux* OS, Version 2021.10 Build 20230619 (id: c2e19c2f3e)"),
])
def test_the_mpiexec_on_path_decides_the_launch_line(tmp_path: Path, text: str, launcher: str, described: str) -> None:
    env = isolated(tmp_path, {"mpiexec": text})
    found = detect_mpi(env)
    assert (found.launcher, found.description) == (launcher, described)
    assert found.executable == str(tmp_path / "bin" / "mpiexec")
    argv = get_mpi_launcher(found.launcher, found.executable).render(
        LaunchSpec(["app"], num_ranks=2, ranks_per_node=2)).argv
    assert argv[0] == found.executable and ("-ppn" in argv) == (launcher == "mpiexec")


def test_no_mpi_means_one_rank_jobs_and_says_so(tmp_path: Path) -> None:
    found = detect_mpi(isolated(tmp_path, {}))
    assert found.launcher == "local" and "no mpiexec or mpirun on PATH" in found.summary()


def test_mpirun_answers_when_mpiexec_is_unknown(tmp_path: Path) -> None:
    found = detect_mpi(isolated(tmp_path, {"mpiexec": "something else 1.0\n", "mpirun": OPENMPI}))
    assert found.launcher == "mpirun" and found.executable.endswith("/mpirun")


def test_open_mpi_gets_allow_run_as_root_only_as_root(tmp_path: Path) -> None:
    env = isolated(tmp_path, {"mpiexec": OPENMPI})
    as_root = resolve_mpi("auto", None, {}, env, euid=0)
    as_user = resolve_mpi("auto", None, {}, env, euid=1000)
    assert as_root[0] == as_user[0] == "mpirun"
    assert as_root[2] == {"allow_run_as_root": "true"} and as_user[2] == {}
    assert get_mpi_launcher(as_root[0], as_root[1], **as_root[2]).render(
        LaunchSpec(["app"])).argv.count("--allow-run-as-root") == 1
    # the settings' own choice wins
    assert resolve_mpi("auto", None, {"allow_run_as_root": "false"}, env, euid=0)[2] == {"allow_run_as_root": "false"}
    assert resolve_mpi("mpiexec", "mpiexec.mpich", {}, env, euid=0) == ("mpiexec", "mpiexec.mpich", {}, None)


def test_named_launcher_that_disagrees_with_path_is_warned_about(tmp_path: Path) -> None:
    env = isolated(tmp_path, {"mpiexec": OPENMPI})
    warning = check_named_launcher("mpiexec", None, env)
    assert warning is not None and "Open MPI 4.1.4" in warning and "auto" in warning
    assert check_named_launcher("mpirun", str(tmp_path / "bin" / "mpiexec"), env) is None
    ls, notes = resolve_launcher_settings(LauncherSettings(mpi_launcher="mpiexec", gpus_per_node=0), env)
    assert ls.mpi_launcher == "mpiexec" and notes and notes[0].startswith("warning:")


@pytest.mark.parametrize("tool, text, ids, var", [
    ("nvidia-smi", NVIDIA, ("0", "1"), "CUDA_VISIBLE_DEVICES"),
    ("rocm-smi", ROCM, ("0", "1"), "ROCR_VISIBLE_DEVICES"),
    ("amd-smi", AMD, ("0", "1"), "ROCR_VISIBLE_DEVICES"),
    ("xpu-smi", XPU, ("0", "1"), "ZE_AFFINITY_MASK"),
])
def test_gpus_are_found_by_the_vendor_tool(tmp_path: Path, tool: str, text: str, ids: tuple, var: str) -> None:  # type: ignore[type-arg]
    found = detect_gpus(isolated(tmp_path, {tool: text}))
    assert (found.gpu_ids, found.gpu_env, found.source.split()[0]) == (ids, var, tool)


def test_visibility_variables_win_over_tools(tmp_path: Path) -> None:
    env = isolated(tmp_path, {"nvidia-smi": NVIDIA})
    assert detect_gpus({**env, "CUDA_VISIBLE_DEVICES": "2,3"}).gpu_ids == ("2", "3")
    assert detect_gpus({**env, "CUDA_VISIBLE_DEVICES": ""}).gpu_ids == ()  # an allocation without GPUs
    assert detect_gpus({**env, "ZE_AFFINITY_MASK": "0.0,0.1"}).gpu_env == "ZE_AFFINITY_MASK"
    assert detect_gpus(isolated(tmp_path / "none", {})).gpu_ids == ()


def test_settings_win_over_what_is_found(tmp_path: Path) -> None:
    env = isolated(tmp_path, {"nvidia-smi": NVIDIA, "mpiexec": HYDRA})
    found, notes = resolve_launcher_settings(LauncherSettings(), env)
    assert (found.gpus_per_node, found.gpu_ids, found.gpu_env) == (2, ["0", "1"], "CUDA_VISIBLE_DEVICES")
    assert found.mpi_launcher == "mpiexec" and any("2 GPUs (0,1) from nvidia-smi -L" in n for n in notes)
    zero, _ = resolve_launcher_settings(LauncherSettings(gpus_per_node=0), env)
    assert zero.gpus_per_node == 0 and zero.gpu_ids == []
    listed, _ = resolve_launcher_settings(LauncherSettings(gpu_ids=["5"], gpu_env="HIP_VISIBLE_DEVICES"), env)
    assert listed.gpu_ids == ["5"] and listed.gpu_env == "HIP_VISIBLE_DEVICES"
    slurm, _ = resolve_launcher_settings(LauncherSettings(node="slurm"), env)  # only the local node looks for itself
    assert slurm.gpus_per_node is None


def _path_with(tmp_path: Path, name: str, target: str) -> str:
    d = tmp_path / f"path-{name}"
    d.mkdir()
    (d / "mpiexec").symlink_to(target)
    return f"{d}:{os.environ['PATH']}"


@pytest.mark.mpi
@pytest.mark.parametrize("program, launcher, version", [("mpirun.openmpi", "mpirun", "Open MPI 4."), ("mpiexec.mpich", "mpiexec", "MPICH Hydra 4.")])
def test_real_mpi_flavours_are_told_apart(tmp_path: Path, program: str, launcher: str, version: str) -> None:
    target = shutil.which(program)
    if target is None:
        pytest.skip(f"{program} is not installed (run: bash .ci/mpi.sh)")
    found = detect_mpi({**os.environ, "PATH": _path_with(tmp_path, program, target)})
    assert found.launcher == launcher and found.description.startswith(version)


def test_gpu_job_on_a_local_site_runs_on_the_gpu_nvidia_smi_lists(site: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A workstation with one NVIDIA GPU and no GPU settings: the job gets it (it used to FAIL: "the nodes have 0")."""
    from balsam.api import ApplicationDefinition
    from tests.launcher_support import output, run, runnable, states

    env = fake_bin(tmp_path, {"nvidia-smi": "GPU 0: NVIDIA RTX A4000 (UUID: GPU-5e1c)\n"})
    monkeypatch.setenv("PATH", f"{env['PATH']}:{os.environ['PATH']}")
    for var in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK"):
        monkeypatch.delenv(var, raising=False)

    class OnGPU(ApplicationDefinition):
        site = "test-site"
        command_template = "echo gpu=$CUDA_VISIBLE_DEVICES"

    [job_id] = runnable(site.store, [OnGPU.submit("gpu/one", gpus_per_rank=1)])
    assert run(site, "mpi", idle_ttl_s=0.5) == 0
    assert states(site.store, [job_id]) == {job_id: "JOB_FINISHED"}
    assert output(site.path, "gpu/one").strip() == "gpu=0"
