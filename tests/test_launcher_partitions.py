"""Partitions: ``-p mpi:1:role=a -p serial:1:role=b`` runs two sub-launchers on their own nodes, each taking
only its own jobs."""

from __future__ import annotations

from typing import Any

from tests.launcher_support import configure, launcher_log, output, run, runnable, states


def test_partitions_split_nodes_and_jobs(site: Any, hello: Any) -> None:
    configure(site.path, node="hostlist", mpi_launcher="local")
    a = [hello.submit(f"p/a{i}", say_hello_to=f"a{i}", tags={"role": "a"}) for i in range(2)]
    b = [hello.submit(f"p/b{i}", say_hello_to=f"b{i}", tags={"role": "b"}, node_packing_count=2) for i in range(3)]
    c = hello.submit("p/c", say_hello_to="c", tags={"role": "c"})
    ids = runnable(site.store, [*a, *b, c])
    code = run(site, "mpi", partitions=["mpi:1:role=a", "serial:1:role=b"], env={"BALSAM_LAUNCHER_NODES": "n1,n2"})
    assert code == 0
    assert states(site.store, ids) == {**{i: "JOB_FINISHED" for i in ids[:5]}, ids[5]: "PREPROCESSED"}
    assert output(site.path, "p/b2") == "Hello, b2!\n"
    mpi_log, serial_log = launcher_log(site.path, "mpi"), launcher_log(site.path, "serial")
    assert "mpi mode on 1 node(s) [n1]" in mpi_log and "acquired 2," in mpi_log
    assert "node worker runs in this process on n2" in serial_log and "acquired 3," in serial_log
    assert "{'role': 'b'}" in serial_log
