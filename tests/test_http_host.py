"""HostBackend: this host's sites behind one backend (what `balsam ui` serves): merged listings in the requested
order, counts added up, a site_id filter narrowing, reads and writes by id going to the row's site, new jobs to
their app's site, and a site created later joining."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from balsam._api import sites as _sites
from balsam.api import ApplicationDefinition, Job
from balsam.db.ids import site_of
from balsam.db.jobs import StateChange, new_job_row
from balsam.exceptions import ObjectDoesNotExist, ValidationError
from balsam.http.host import HostBackend, HostSite, HostSites
from balsam.site import init_site

COLS = ("id", "workdir", "state", "last_update")


def _site_with_jobs(root: Path, name: str, n: int) -> Tuple[Any, type]:
    init_site(root, name=name)
    ref = _sites.resolve(name)

    class Hello(ApplicationDefinition):
        """Says hello."""

        site = name
        command_template = "echo Hello, {{ who }}!"

    Hello.sync()
    Job.objects.bulk_create([Hello.submit(workdir=f"{name}/{i}", who=str(i), save=False, tags={"n": str(i % 2)}) for i in range(n)])
    return ref, Hello


@pytest.fixture
def two(tmp_path: Path) -> Tuple[HostBackend, Dict[str, Any], List[HostSite]]:
    """Sites "alpha" (5 jobs) and "beta" (4 jobs) on this host, served by one HostBackend."""
    refs = {name: _site_with_jobs(tmp_path / name, name, n)[0] for name, n in (("alpha", 5), ("beta", 4))}
    served = [HostSite(r.id, r.name, r.path, r.backend) for r in refs.values()]
    return HostBackend(HostSites(lambda: list(served), refresh_s=0.0)), refs, served


def _all_rows(refs: Dict[str, Any], order: Tuple[str, ...]) -> List[Tuple[Any, ...]]:
    rows = [r for ref in refs.values() for r in ref.backend.select("job", {}, columns=COLS)]
    for key in reversed(order):
        i = COLS.index(key.lstrip("-"))
        rows.sort(key=lambda r, i=i: r[i], reverse=key.startswith("-"))
    return rows


def test_listings_merge_every_site_in_order_and_pages_hold_together(two: Any) -> None:
    host, refs, _ = two
    alpha, beta = refs["alpha"], refs["beta"]
    beta.backend.update_jobs([], changes=[StateChange(beta.backend.ids("job", {})[0], "USER_KILLED")])  # newest last_update
    for order in (("id",), ("-id",), ("-last_update", "-id"), ("workdir", "id")):
        want = _all_rows(refs, order)
        assert host.select("job", {}, columns=COLS, order_by=order) == want
        pages = [host.select("job", {}, columns=COLS, order_by=order, limit=2, offset=o) for o in range(0, 10, 2)]
        assert [r for p in pages for r in p] == want  # paging the merge loses or repeats nothing
    assert {site_of(r[0]) for r in host.select("job", {}, columns=("id",))} == {alpha.id, beta.id}
    assert host.select("job", {}, columns=("workdir",), order_by=("-last_update",), limit=1) == [("beta/0",)]
    assert host.count("job", {}) == 9
    assert host.count_by("job", {}, "state") == {"STAGED_IN": 8, "USER_KILLED": 1}
    assert host.count("job", {"tags": {"n": "1"}}) == 2 + 2
    with pytest.raises(ValidationError, match="cannot order"):
        host.select("job", {}, columns=COLS, order_by=("bogus",))


def test_a_site_filter_narrows_and_ids_go_to_their_site(two: Any) -> None:
    host, refs, _ = two
    alpha, beta = refs["alpha"], refs["beta"]
    only_beta = host.narrow([beta.id])
    assert sorted(r[0] for r in only_beta.select("job", {}, columns=("workdir",))) == [f"beta/{i}" for i in range(4)]
    assert only_beta.site_row(("name",)) == ("beta",)
    assert host.narrow([12345]).select("job", {}, columns=("id",)) == []
    with pytest.raises(ValidationError, match="name the site"):
        host.site_row(("name",))  # which one? the caller must say
    a_job = alpha.backend.ids("job", {})[0]
    assert host.select("job", {"id": [a_job]}, columns=("workdir",)) == [("alpha/0",)]
    assert host.select("event", {"job_id": [a_job]}, columns=("to_state",)) == alpha.backend.select("event", {"job_id": [a_job]},
                                                                                                    columns=("to_state",))
    with pytest.raises(ObjectDoesNotExist):
        host.last_event_message((99 << 32) | 1)  # an id of a site this host does not serve


def test_writes_go_to_the_site_of_each_row(two: Any) -> None:
    host, refs, _ = two
    alpha, beta = refs["alpha"], refs["beta"]
    a_job, b_job = alpha.backend.ids("job", {})[0], beta.backend.ids("job", {})[0]
    host.update_jobs([(a_job, {"tags": {"x": "a"}}), (b_job, {"tags": {"x": "b"}})], changes=[StateChange(b_job, "USER_KILLED")])
    assert alpha.backend.select("job", {"id": [a_job]}, columns=("tags",)) == [('{"x":"a"}',)]
    assert beta.backend.select("job", {"id": [b_job]}, columns=("tags", "state")) == [('{"x":"b"}', "USER_KILLED")]
    rejected = host.apply_changes([StateChange(a_job, "USER_KILLED"), StateChange(b_job, "RUNNING")])
    assert [i for i, _ in rejected] == [1]  # b is killed: it cannot run; a was killed at its own site
    assert alpha.backend.select("job", {"id": [a_job]}, columns=("state",)) == [("USER_KILLED",)]
    assert host.delete_jobs([a_job, b_job]) == 2
    assert alpha.backend.count("job", {}) == 4 and beta.backend.count("job", {}) == 3

    apps = {site_of(r[0]): r[0] for r in host.select("app", {}, columns=("id",))}
    rows = [new_job_row("new/b", apps[beta.id], parameters={"who": "b"}), new_job_row("new/a", apps[alpha.id], parameters={"who": "a"})]
    ids, states, _ = host.create_jobs(rows, {})
    assert [site_of(i) for i in ids] == [beta.id, alpha.id] and states == ["STAGED_IN", "STAGED_IN"]
    assert alpha.backend.select("job", {"id": [ids[1]]}, columns=("workdir",)) == [("new/a",)]
    with pytest.raises(ValidationError, match="name the site"):
        host.create_batch_job({"num_nodes": 1, "wall_time_min": 5, "queue": "local", "project": "local"})
    bj = host.narrow([beta.id]).create_batch_job({"num_nodes": 1, "wall_time_min": 5, "queue": "local", "project": "local"})
    assert site_of(bj) == beta.id and beta.backend.count("batch_job", {}) == 1


def test_a_site_created_later_joins(two: Any, tmp_path: Path) -> None:
    _, refs, served = two
    host = HostBackend(HostSites(lambda: [HostSite(r.id, r.name, r.path, r.backend) for r in _sites.local_sites()], refresh_s=0.0))
    assert sorted(s.name for s in host.parts()) == ["alpha", "beta"]
    gamma, _ = _site_with_jobs(tmp_path / "gamma", "gamma", 2)
    assert sorted(s.name for s in host.parts()) == ["alpha", "beta", "gamma"]
    assert host.count("job", {}) == 11
    assert [(sid, b.count("job", {})) for sid, b in host.site_parts() if sid == gamma.id] == [(gamma.id, 2)]
