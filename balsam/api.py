"""The Balsam Python API, compatible with Balsam 0.7's ``balsam.api``, working offline on local site DBs.

::

    from balsam.api import ApplicationDefinition, Job, BatchJob, Site, EventLog

    class Hello(ApplicationDefinition):
        site = "my-site"
        command_template = "echo Hello, {{ say_hello_to }}!"

    job = Hello.submit(workdir="demo/hello", say_hello_to="world")
    Job.objects.filter(tags={"experiment": "xyz"}, state="PREPROCESSED").order_by("-id")[:10]

Queries touch the current site (:func:`use_site`, ``BALSAM_SITE_PATH``, or the site around the working
directory), else every site registered on this host. Importing this module opens nothing.

Beyond Balsam 0.7: ``job.why()`` says why a job waits, ``batch_job.preview_submission()`` renders its batch script
and submit line, :mod:`maintenance` checks, backs up, compacts, migrates and rebuilds a site's DB, and :mod:`relay`
logs in to a relay and links sites to it (what ``balsam db``, ``balsam login`` and ``balsam site link`` do).

Balsam 0.7's other names work too: ``balsam.api.models.App``, and the typed specs ``AppParameter``,
``TransferSlot``, ``TransferDirection``, ``JobTransferItem``, ``JobMode`` and ``BatchJobPartition``
(:mod:`balsam._api.schemas`), accepted wherever their plain dicts are.
"""

from __future__ import annotations

from balsam._api import maintenance, models, relay
from balsam._api.app import ApplicationDefinition
from balsam._api.dag import DAG, DAGInstance
from balsam._api.jobs import ALL_COMPLETED, FIRST_COMPLETED, Job, JobFailed, RemoteTraceback, add_dependency
from balsam._api.models import App, BatchJob, EventLog, Session, Site, TransferItem
from balsam._api.schemas import (
    AppParameter,
    BatchJobPartition,
    JobMode,
    JobTransferItem,
    TransferDirection,
    TransferSlot,
)
from balsam._api.sites import current_site, use_site
from balsam.db.states import BatchJobState, JobState, TransferItemState
from balsam.exceptions import BalsamError

__all__ = [
    "ALL_COMPLETED",
    "App",
    "AppParameter",
    "ApplicationDefinition",
    "BalsamError",
    "BatchJob",
    "BatchJobPartition",
    "BatchJobState",
    "DAG",
    "DAGInstance",
    "EventLog",
    "FIRST_COMPLETED",
    "Job",
    "JobFailed",
    "JobMode",
    "JobState",
    "JobTransferItem",
    "RemoteTraceback",
    "Session",
    "Site",
    "TransferDirection",
    "TransferItem",
    "TransferItemState",
    "TransferSlot",
    "add_dependency",
    "current_site",
    "maintenance",
    "models",
    "relay",
    "site_config",  # noqa: F822 - provided by __getattr__ (read when asked for)
    "use_site",
]


def __getattr__(name: str) -> object:
    """``site_config``: the current site's SiteConfig (None outside a site), read when first asked for."""
    if name == "site_config":
        from balsam.config import current_site_config

        return current_site_config()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
