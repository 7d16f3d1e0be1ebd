"""What the transfer tests share: a site whose settings carry transfer locations, and a loop that runs the
transfer service's cycle until a job reaches a state (with what its items say when it does not)."""

from __future__ import annotations

import os
import time
from typing import Any, Dict

from balsam.api import Job, TransferItem
from balsam.services.transfers import TransferService
from balsam.settings import SiteSettings, TransferSettings
from balsam.site import refresh_site_row


def make_service(site: Any, locations: Dict[str, str], **kw: Any) -> TransferService:
    """A transfer service for ``site`` with these ``transfer_locations`` (also written to the site row)."""
    settings = TransferSettings(transfer_locations=locations, **kw)
    refresh_site_row(site.store, SiteSettings(transfers=settings))
    return TransferService(site, settings, env=dict(os.environ))


def cycle_until(service: TransferService, job_id: int, state: str, timeout: float = 60.0, period: float = 0.05) -> Job:
    """Run the service's cycles until the job is in ``state``; fail saying where its items are after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        service.run_cycle()
        job = Job.objects.get(id=job_id)
        if str(job.state) == state:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is {job.state}, not {state}; items: "
                                 f"{[(t.state, t.transfer_info) for t in TransferItem.objects.filter(job_id=job_id)]}")
        time.sleep(period)
