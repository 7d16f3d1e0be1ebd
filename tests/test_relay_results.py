"""Results through the relay are loaded only when their site signed them (DESIGN.md section 7): a laptop (this
process, no site) reads run() results and exceptions of jobs a real launcher ran at the login node's site, once it
trusts the site's result key (``balsam site key``); what the relay's operator or a holder of the site's relay token
plants (an unsigned pickle, one signed with another key, a genuine result moved to another job) is never unpickled,
and says so in one line naming the job."""

from __future__ import annotations

import base64
import json
import os
import pickle
import sqlite3
import uuid
from pathlib import Path
from typing import Any, Dict

import pytest

from balsam import exceptions as exc
from tests.test_relay_sync import Relay, login_node, relay, run, wait_for  # noqa: F401  (relay: the fixture)

APPS = """
import os
from balsam.api import ApplicationDefinition, BatchJob, Job

class Square(ApplicationDefinition):
    site = "polaris"

    def run(self, x):
        if x < 0:
            raise ValueError(f"negative: {x}")
        return {"square": x * x}

os.chdir({root!r})
Square.sync()
Job("sq/3", app_id="Square", site_name="polaris", parameters={"x": 3}).save()
Job("sq/neg", app_id="Square", site_name="polaris", parameters={"x": -1}).save()
import datetime
Job("sq/date", app_id="Square", site_name="polaris", parameters={"x": datetime.date(2026, 12, 1)}).save()  # not JSON: pickled
BatchJob.objects.create(num_nodes=1, wall_time_min=10, job_mode="serial", queue="local", project="local", site_name="polaris")
"""


class Planted:
    """Unpickling this makes the directory ``path``: what a hostile pickle would do (run code)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> Any:
        return (os.mkdir, (self.path,))


def site_row(root: Path, workdir: str) -> Dict[str, Any]:
    conn = sqlite3.connect(str(root / ".balsam" / "site.db"))
    conn.row_factory = sqlite3.Row
    try:
        return dict(conn.execute("SELECT * FROM job WHERE workdir = ?", (workdir,)).fetchone())
    finally:
        conn.close()


def push_as_the_site(root: Path, row: Dict[str, Any], **blobs: bytes) -> None:
    """Push ``row`` with ``blobs`` in place of its results (and pickled parameters), with the site's own relay token
    (stolen)."""
    from balsam.sync import site_client, site_link

    link = site_link(root)
    assert link is not None
    row = dict(row, version=int(row["version"]) + 1)
    for col in ("serialized_return_value", "serialized_exception", "parameters_pickled"):
        value = blobs.get(col)
        row[col] = base64.b64encode(value).decode() if value is not None else None
    answer = site_client(link).request("POST", "/v1/sync/push", {
        "submission_id": uuid.uuid4().hex, "last_seq": 0, "items": [{"entity": "job", "op": "upsert", "id": row["id"], "row": row}]})
    assert answer["applied"] == 1, answer


@pytest.mark.slow
def test_results_load_through_the_relay_only_as_their_site_signed_them(relay: Relay, tmp_path: Path) -> None:  # noqa: F811
    env, root = login_node(tmp_path, relay)
    run(env, "-c", APPS.replace("{root!r}", repr(str(root))))
    run(env, "-m", "balsam", "site", "start", "--site", str(root))
    try:
        laptop = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        run(laptop, "-m", "balsam", "login", relay.url, "-u", "alice", "--password-stdin", stdin="alice-password\n")
        from balsam import _api
        from balsam.api import Job

        _api.sites.reset()
        wait_for("the jobs ended, as the laptop sees them", lambda: Job.objects.filter(
            site_name="polaris", state=["JOB_FINISHED", "FAILED"]).count() == 3, timeout=120)
        # Pickled run() arguments stay at the site (a push holding them failed, every time, and the site stopped
        # syncing): the laptop sees their placeholder.
        assert Job.objects.get(workdir="sq/date", site_name="polaris").parameters == {"x": "<pickled datetime.date>"}
        good = Job.objects.get(workdir="sq/3", site_name="polaris")
        bad = Job.objects.get(workdir="sq/neg", site_name="polaris")
        # The laptop does not hold the site's key yet: nothing is unpickled, and the error says what to do.
        with pytest.raises(exc.ResultNotTrusted, match=rf"job {good.id}: its return value is signed with site polaris's "
                                                       r"result key, which this computer does not hold.*balsam site key --trust"):
            good.result()
        printed = run(env, "-m", "balsam", "site", "key", "--site", str(root))
        key = printed.stdout.strip()
        assert key.startswith("balsam-result-key-1:") and "balsam site key --trust" in printed.stderr
        assert oct((root / ".balsam" / "result.key").stat().st_mode & 0o777) == "0o600"
        trusted = run(laptop, "-m", "balsam", "site", "key", "--trust", "-", "--label", "polaris", stdin=key + "\n")
        assert "now trusted" in trusted.stdout
        assert oct((Path(os.environ["BALSAM_HOME"]) / "result-keys").stat().st_mode & 0o777) == "0o600"
        # Balsam 0.7's calls, unchanged: the value, and the run's exception re-raised.
        assert good.result() == {"square": 9}
        assert Job.objects.get(id=good.id).result_nowait() == {"square": 9}
        with pytest.raises(ValueError, match="negative: -1"):
            bad.result()
        # On the site's host nothing is checked: the site DB is inside the trust boundary.
        home = run(env, "-c", "from balsam.api import Job\nprint(Job.objects.get(workdir='sq/3', site_name='polaris').result())")
        assert home.stdout.strip() == "{'square': 9}"

        run(env, "-m", "balsam", "site", "stop", "--site", str(root))  # its own pushes would mend what is planted below
        # Planted at the relay with the site's stolen token: a pickle that would make a directory when loaded.
        marker = tmp_path / "planted"
        evil = pickle.dumps(Planted(marker), protocol=4)
        from balsam.site import result_keys

        genuine = site_row(root, "sq/3")
        wrong_key = result_keys.sign(b"k" * 32, good.id, "serialized_return_value", evil)
        signed_good = result_keys.sign(result_keys.parse_key(key), good.id, "serialized_return_value", genuine["serialized_return_value"])
        cases = [
            ({"serialized_return_value": evil}, "without site polaris's signature"),
            ({"serialized_return_value": wrong_key}, "signed with site polaris's result key, which this computer does not hold"),
            ({"serialized_return_value": signed_good.replace(b"square", b"squire")}, "does not match site polaris's signature"),
            ({"serialized_exception": result_keys.sign(result_keys.parse_key(key), bad.id, "serialized_exception",
                                                       site_row(root, "sq/neg")["serialized_exception"])},
             "its exception does not match"),  # bad's genuine exception, moved to the good job
        ]
        for blobs, says in cases:
            push_as_the_site(root, site_row(root, "sq/3"), **blobs)
            job = Job.objects.get(id=good.id)
            with pytest.raises(exc.ResultNotTrusted, match=rf"^job {good.id}: .*{says}.*so it was not loaded"):
                job.result_nowait()
            assert not marker.exists()
        # A relay that serves pickled run() arguments (its operator changed it to) has them ignored: placeholders stay.
        from balsam.http import schemas

        with pytest.MonkeyPatch.context() as hostile:
            hostile.setitem(schemas.PRIVATE_COLUMNS, "job", frozenset())
            row = site_row(root, "sq/3")
            push_as_the_site(root, dict(row, parameters=json.dumps({"x": "<pickled os.mkdir>"})), parameters_pickled=pickle.dumps(
                {"x": Planted(marker)}, protocol=4), serialized_return_value=row["serialized_return_value"])
            assert Job.objects.get(id=good.id).parameters == {"x": "<pickled os.mkdir>"}
        assert not marker.exists()
        # The CLI says it in one line, too (a relay read from the laptop).
        out = run(laptop, "-c", f"from balsam.api import Job\nJob.objects.get(id={good.id}).result()", check=False)
        assert out.returncode != 0 and "ResultNotTrusted" in out.stderr and not marker.exists()
    finally:
        run(env, "-m", "balsam", "site", "stop", "--site", str(root), check=False)


def test_a_result_key_cut_short_or_not_one_is_refused_in_one_line(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for text, says in (("hello", "not a result key: one starts with balsam-result-key-1:"),
                       ("balsam-result-key-1:abcd", "cut short or changed")):
        out = run(env, "-m", "balsam", "site", "key", "--trust", text, check=False)
        assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    assert not (Path(os.environ["BALSAM_HOME"]) / "result-keys").exists()


def test_app_code_served_by_a_relay_is_never_loaded(relay: Relay, tmp_path: Path) -> None:  # noqa: F811
    """A relay answers app rows without code; one that served code anyway (a hostile operator) is not run."""
    from balsam import _api
    from balsam._api.app import _load
    from balsam.sync import login as relay_login

    relay_login(relay.url, "alice", "alice-password")
    _api.sites.reset()
    ref = _api.sites.SiteRef(id=7, name="polaris", path=tmp_path / "nowhere", host="relay:" + relay.url)
    marker = tmp_path / "ran"
    with pytest.raises(exc.AppError, match="read through the relay, which does not carry app code"):
        _load(ref, 7 << 32 | 1, "Hello", f"import os\nos.mkdir({str(marker)!r})\n", 1)
    assert not marker.exists()
