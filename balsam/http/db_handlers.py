"""The /v1 routes of DB maintenance (over :class:`balsam.db.backend.Backend`'s db_* operations): check (and repair),
online backup and compaction, for the site's owner from any host; the agent runs them on the home host.

Rebuilding a damaged DB and migrating its schema are not here: both replace the DB under a stopped agent, so only
the home host may do them (:func:`balsam.site.refuse_away_from_home` says so, naming it).
"""

from __future__ import annotations

from balsam.exceptions import ValidationError
from balsam.http.handlers import Answer, Call, _body_obj, _need_site


def db_check(call: Call) -> Answer:
    _need_site(call, "check the site's DB")
    fix = _body_obj(call).get("fix", False) if call.body is not None else False
    if not isinstance(fix, bool):
        raise ValidationError("fix: expected true or false")
    return 200, call.backend.db_check(fix)


def db_backup(call: Call) -> Answer:
    _need_site(call, "back up the site's DB")
    body = _body_obj(call)
    dest, force = body.get("dest"), body.get("force", False)
    if not isinstance(dest, str) or not dest or not isinstance(force, bool):
        raise ValidationError("dest: an absolute path is required (force: true or false)")
    return 200, call.backend.db_backup(dest, force)


def db_vacuum(call: Call) -> Answer:
    _need_site(call, "compact the site's DB")
    return 200, call.backend.db_vacuum()


__all__ = ["db_backup", "db_check", "db_vacuum"]
