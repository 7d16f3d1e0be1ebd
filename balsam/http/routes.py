"""The one route table of the /v1 API: path, method, parameters, request and answer schemas, errors.

The server (:mod:`balsam.http.server`) builds its Starlette routes from :data:`ROUTES`, and
:func:`openapi` builds the OpenAPI 3 document served at ``/v1/openapi.json`` from the same table, so they
cannot drift apart (a test checks both directions).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Tuple

from balsam import __version__
from balsam.http import bulk_handlers as bh
from balsam.http import dag_handlers as dh
from balsam.http import db_handlers as mh
from balsam.http import handlers as h
from balsam.http.schemas import (
    BOOL,
    ERROR,
    FILTER_KINDS,
    JOB_CREATE,
    JOB_UPDATE,
    PAGE,
    QUERY_BODY,
    STATE_CHANGE,
    STR,
    _obj,
    row_schema,
)

Handler = Callable[[h.Call], Tuple[int, Any]]

ERROR_STATUSES = {400: "invalid", 401: "unauthorized", 404: "not_found", 409: "conflict", 413: "too_large", 422: "malformed",
                  429: "too_many", 503: "unavailable"}
"""Status -> error code; every route documents these with the one error shape."""


@dataclass(frozen=True)
class Param:
    """A query parameter."""

    name: str
    schema: Dict[str, Any]
    description: str = ""
    repeat: bool = False


@dataclass(frozen=True)
class Route:
    """One operation of the API."""

    method: str
    path: str
    name: str
    summary: str
    handler: Optional[Handler]
    query: Tuple[Param, ...] = ()
    body: Optional[Dict[str, Any]] = None
    response: Dict[str, Any] = None  # type: ignore[assignment]
    status: int = 200
    auth: bool = True
    kind: str = "json"
    """"json"; "acquire" (long-poll, exactly-once); "ws" (WebSocket); "openapi"; "static" (the dashboard)."""
    alone: bool = False
    """Runs outside any transaction of the server's (no group commit, no stored answer): DB maintenance, which
    takes the writer lock itself (VACUUM cannot run inside a transaction)."""

    @property
    def mutating(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE")


def _filter_params(table: str) -> Tuple[Param, ...]:
    out = []
    for name, kind in FILTER_KINDS[table].items():
        schema: Dict[str, Any] = {"type": "string"}
        if kind in ("ids",):
            schema = {"type": "array", "items": {"type": "integer", "minimum": 1}}
        elif kind in ("strs", "tags"):
            schema = {"type": "array", "items": {"type": "string"}}
        elif kind == "int":
            schema = {"type": "integer"}
        elif kind == "bool":
            schema = {"type": "boolean"}
        elif kind == "time":
            schema = {"type": "string", "format": "date-time"}
        out.append(Param(name, schema, f"filter ({kind})", repeat=schema.get("type") == "array"))
    return tuple(out)


def _page_params(table: str) -> Tuple[Param, ...]:
    return _filter_params(table) + (
        Param("ordering", {"type": "string"}, "field name, '-' for descending"),
        Param("limit", {"type": "integer", "minimum": 1, "maximum": h.MAX_LIMIT}),
        Param("cursor", {"type": "string"}, "next_cursor of the previous page"),
        Param("offset", {"type": "integer", "minimum": 0}, "rows skipped before the first page"),
        Param("count", {"type": "boolean"}, "include the total count"),
    )


def _page_of(table: str) -> Dict[str, Any]:
    props: Dict[str, Any] = dict(PAGE["properties"])
    props["results"] = {"type": "array", "items": row_schema(table)}
    return {**PAGE, "properties": props}


def _list(path: str, table: str, name: str, what: str) -> Route:
    return Route("GET", path, name, f"List {what} (filters as in the Python API; paged by cursor)", partial(h.list_rows, table=table),
                 query=_page_params(table), response=_page_of(table))


def _query(path: str, table: str, name: str, what: str) -> Route:
    return Route("POST", path, name, f"Query {what} with filters as JSON (rows, count, ids or counts by a column)",
                 partial(h.query_rows, table=table), body=QUERY_BODY, response={"type": "object"})


def _get(path: str, table: str, name: str, what: str) -> Route:
    return Route("GET", path, name, f"One {what}", partial(h.get_row, table=table), response=row_schema(table))


ID = "{id}"
OBJ = {"type": "object"}
ROW_LIST = {"type": "array", "items": OBJ}
SITE_ID = {"type": "integer", "minimum": 1}
"""The site of a bulk creation in parts, at a relay (which serves several); a site's agent ignores it."""
CREATED = {"type": "object", "properties": {"ids": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
                                           "states": {"type": "array", "items": {"type": "array"}}, "created": STR},
           "required": ["ids", "states", "created"]}
"""Created jobs named compactly: ids as [first, count] runs, initial states as [state, count] runs."""
IDS = {"type": "object", "properties": {"ids": {"type": "array", "items": {"type": "integer", "minimum": 1}}}, "required": ["ids"]}

ROUTES: Tuple[Route, ...] = (
    Route("GET", "/v1/health", "health", "Liveness (no credentials needed)", None, response={"type": "object"}, auth=False,
          kind="health"),
    Route("GET", "/v1/openapi.json", "openapi", "This document", None, response={"type": "object"}, auth=False, kind="openapi"),
    Route("GET", "/v1/whoami", "whoami", "Who the credentials belong to", h.whoami,
          response={"type": "object", "properties": {"user": {"type": "string"}, "sites": {"type": "array"}, "kind": {"type": "string"}}}),
    # sites
    Route("GET", "/v1/sites", "list_sites", "The sites this server serves", h.list_sites, response=_page_of("site")),
    Route("GET", f"/v1/sites/{ID}", "get_site", "One site, with its agent and backlog", h.get_site, response=row_schema("site")),
    Route("PATCH", f"/v1/sites/{ID}", "update_site", "Change a site's fields (site owner)", h.update_site, body=OBJ,
          response=row_schema("site")),
    # apps
    Route("GET", "/v1/apps", "list_apps", "List apps", h.list_apps, query=_page_params("app") + (Param("include_source", {"type": "boolean"}),),
          response=_page_of("app")),
    _query("/v1/apps/query", "app", "query_apps", "apps"),
    Route("POST", "/v1/apps", "sync_app", "Create or update an app by name (site owner)", h.sync_app, body=OBJ, response=row_schema("app"),
          status=201),
    Route("POST", "/v1/apps/code", "app_code", "Stored code of apps by id (launchers)", h.app_code,
          body={"type": "object", "properties": {"ids": {"type": "array", "items": {"type": "integer"}}}, "required": ["ids"]},
          response={"type": "object"}),
    _get(f"/v1/apps/{ID}", "app", "get_app", "app"),
    Route("PATCH", f"/v1/apps/{ID}", "update_app", "Rename or describe an app", partial(h.update_row, table="app"), body=OBJ,
          response=row_schema("app")),
    Route("PATCH", "/v1/apps", "update_apps", "Change many apps in one transaction (site owner)", partial(bh.update_many, table="app"),
          body=ROW_LIST, response=ROW_LIST),
    Route("POST", "/v1/apps/delete", "delete_apps", "Delete apps by id, and their jobs, in one transaction (site owner)",
          partial(bh.delete_many, table="app"), body=IDS, response=OBJ),
    Route("DELETE", f"/v1/apps/{ID}", "delete_app", "Delete an app and its jobs", partial(h.delete_row, table="app"),
          response=OBJ),
    # jobs
    _list("/v1/jobs", "job", "list_jobs", "jobs"),
    Route("GET", "/v1/jobs/count", "count_jobs", "Count jobs, or counts by state", h.count_jobs,
          query=_filter_params("job") + (Param("group_by", {"type": "string", "enum": ["state"]}),), response=OBJ),
    _query("/v1/jobs/query", "job", "query_jobs", "jobs"),
    Route("POST", "/v1/jobs", "create_jobs", "Bulk create jobs in one transaction; the answer is the jobs as created, or with "
          "answer=ids their ids and initial states as [first, count] and [state, count] runs", bh.create_jobs,
          query=(Param("answer", {"type": "string", "enum": ["rows", "ids"]}, "rows (default) or ids"),),
          body={"type": "array", "items": JOB_CREATE}, response={"oneOf": [ROW_LIST, CREATED]}, status=201),
    Route("PATCH", "/v1/jobs", "update_jobs", "Bulk update jobs by id (state changes through the state machine)", h.update_jobs,
          body={"type": "array", "items": JOB_UPDATE}, response=ROW_LIST),
    Route("PUT", "/v1/jobs", "query_update_jobs", "Set fields or the state of every matching job", h.query_update_jobs,
          query=_filter_params("job"), body=OBJ, response=OBJ),
    Route("DELETE", "/v1/jobs", "delete_jobs", "Delete every matching job (at least one filter)", h.delete_jobs,
          query=_filter_params("job"), response=OBJ),
    Route("POST", "/v1/jobs/delete", "delete_jobs_by_id", "Delete jobs by id in one transaction (any number of ids)",
          partial(bh.delete_many, table="job"), body=IDS, response=OBJ),
    Route("GET", f"/v1/jobs/{ID}", "get_job", "One job, with its child ids", partial(h.get_row, table="job"), response=row_schema("job")),
    Route("PATCH", f"/v1/jobs/{ID}", "update_job", "Update one job", h.update_job, body=OBJ, response=row_schema("job")),
    Route("DELETE", f"/v1/jobs/{ID}", "delete_job", "Delete one job", h.delete_job, response=OBJ),
    Route("GET", f"/v1/jobs/{ID}/output", "job_output", "The tail of the job's job.out", h.job_output,
          query=(Param("tail_bytes", {"type": "integer", "minimum": 0, "maximum": 16 * 1024 * 1024}),), response=OBJ),
    Route("GET", f"/v1/jobs/{ID}/why", "job_why", "Why the job is in its state and what would move it on", h.why,
          response={"type": "object", "properties": {"reasons": {"type": "array", "items": {"type": "string"}}}}),
    Route("GET", f"/v1/jobs/{ID}/message", "job_message", "The message of the job's latest event that has one", h.last_message,
          response=OBJ),
    # bulk creations too large for one request: parts kept at the site, then created together (balsam.db.uploads)
    Route("POST", "/v1/uploads/jobs", "stage_jobs", "One part of a bulk creation, checked and kept at the site until its upload is "
          "committed (a part sent again replaces itself)", bh.stage_jobs,
          body=_obj({"upload": STR, "part": {"type": "integer", "minimum": 0}, "offset": {"type": "integer", "minimum": 0},
                     "jobs": {"type": "array", "items": JOB_CREATE}, "site_id": SITE_ID}, required=("upload", "part", "jobs")),
          response=OBJ),
    Route("POST", "/v1/uploads/jobs/commit", "commit_jobs", "Create the jobs of every part of an upload in one transaction (all or "
          "none); ids and initial states come as [first, count] and [state, count] runs", bh.commit_jobs,
          body=_obj({"upload": STR, "parts": {"type": "integer", "minimum": 1}, "site_id": SITE_ID,
                     "jobs": {"type": "integer", "minimum": 0, "description": "how many jobs the parts hold (a relay waits for "
                              "its site in proportion)"}}, required=("upload", "parts")),
          response=OBJ,
          status=201),
    Route("DELETE", "/v1/uploads/jobs", "drop_upload", "Forget the parts of an upload that will not be committed", bh.drop_upload,
          query=(Param("upload", STR), Param("site_id", SITE_ID, "the upload's site (a relay)")), response=OBJ),
    # batch jobs
    _list("/v1/batch-jobs", "batch_job", "list_batch_jobs", "batch jobs"),
    _query("/v1/batch-jobs/query", "batch_job", "query_batch_jobs", "batch jobs"),
    Route("POST", "/v1/batch-jobs", "create_batch_job", "Submit a BatchJob (validated against the site's queues)", h.create_batch_job,
          body=OBJ, response=row_schema("batch_job"), status=201),
    Route("POST", "/v1/batch-jobs/preview", "preview_batch_job", "The batch script and scheduler command line a new BatchJob would be "
          "submitted with, and the id it would get (nothing is written or submitted)", h.preview_batch_job, body=OBJ,
          response={"type": "object", "properties": {"batch_job_id": {"type": "integer"}, "script": STR, "script_path": STR,
                                                     "command": {"type": "array", "items": STR}}}),
    Route("PATCH", "/v1/batch-jobs", "update_batch_jobs", "Change many BatchJobs in one transaction (state: pending_deletion "
          "cancels)", partial(bh.update_many, table="batch_job"), body=ROW_LIST, response=ROW_LIST),
    Route("POST", "/v1/batch-jobs/delete", "delete_batch_jobs", "Delete BatchJobs by id in one transaction (a queued or running one "
          "is cancelled first, then removed)", partial(bh.delete_many, table="batch_job"), body=IDS, response=OBJ),
    _get(f"/v1/batch-jobs/{ID}", "batch_job", "get_batch_job", "batch job"),
    Route("PATCH", f"/v1/batch-jobs/{ID}", "update_batch_job", "Change a BatchJob (state: pending_deletion cancels it)",
          partial(h.update_row, table="batch_job"), body=OBJ, response=row_schema("batch_job")),
    Route("DELETE", f"/v1/batch-jobs/{ID}", "delete_batch_job", "Delete a BatchJob (a queued or running one is cancelled first, then removed)", partial(h.delete_row, table="batch_job"),
          response=OBJ),
    # events, transfers, sessions
    _list("/v1/events", "event", "list_events", "job state events"),
    _query("/v1/events/query", "event", "query_events", "events"),
    _list("/v1/transfers", "transfer_item", "list_transfers", "transfer items"),
    _query("/v1/transfers/query", "transfer_item", "query_transfers", "transfer items"),
    Route("PATCH", "/v1/transfers", "update_transfers", "Bulk update transfer items", h.update_transfers, body=ROW_LIST, response=ROW_LIST),
    _list("/v1/sessions", "session", "list_sessions", "launcher sessions (leases)"),
    _query("/v1/sessions/query", "session", "query_sessions", "sessions"),
    Route("POST", "/v1/sessions", "create_session", "Open a lease", h.create_session,
          body={"type": "object", "properties": {"batch_job_id": {"type": ["integer", "null"]}, "label": {"type": "string"},
                                                 "host": {"type": "string"}, "pid": {"type": "integer"}}},
          response=OBJ, status=201),
    Route("POST", f"/v1/sessions/{ID}/acquire", "acquire", "Lock runnable jobs to the lease (a retry returns the same jobs)", None,
          body={"type": "object", "properties": {"max_num_jobs": {"type": "integer", "minimum": 0}, "wait_s": {"type": "number"},
                                                 "constraints": OBJ}},
          response={"type": "object", "properties": {"jobs": ROW_LIST}}, kind="acquire"),
    Route("PUT", f"/v1/sessions/{ID}", "tick_session", "Renew the lease", h.tick_session, response=OBJ),
    Route("DELETE", f"/v1/sessions/{ID}", "release_session", "Release the lease (running jobs time out)", h.release_session,
          response=OBJ),
    Route("POST", "/v1/status-batches", "status_batch", "A launcher's batch of state changes (applied once per Idempotency-Key)",
          h.status_batch, body={"type": "object", "properties": {"session_id": {"type": ["integer", "null"]},
                                                                 "changes": {"type": "array", "items": STATE_CHANGE}},
                                "required": ["changes"]},
          response={"type": "object", "properties": {"rejected": {"type": "array"}}}),
    # DAG templates and instances
    Route("GET", "/v1/dags", "list_dags", "DAG templates of the site", dh.list_dags,
          query=(Param("site_id", {"type": "integer", "minimum": 1}, "one site's (a relay serves many)"),), response=OBJ),
    Route("PUT", "/v1/dags", "save_dag", "Store or replace a DAG template (checked: nodes, cycles, placeholders, apps)", dh.save_dag,
          body=OBJ, response=OBJ),
    Route("DELETE", "/v1/dags", "delete_dag", "Forget a DAG template (its jobs stay)", dh.delete_dag,
          query=(Param("name", {"type": "string"}), Param("site_id", {"type": "integer", "minimum": 1})), response=OBJ),
    Route("POST", "/v1/dags/instantiate", "instantiate_dag", "One instance per record of placeholder values, in one transaction",
          dh.instantiate, body=OBJ, response=OBJ, status=201),
    Route("GET", "/v1/dag-instances", "list_dag_instances", "A DAG's instances (state: those with a job in it)", dh.list_instances,
          query=(Param("dag_id", {"type": "integer", "minimum": 1}),
                 Param("id", {"type": "array", "items": {"type": "integer", "minimum": 1}}, repeat=True),
                 Param("state", {"type": "array", "items": {"type": "string"}}, repeat=True),
                 Param("limit", {"type": "integer", "minimum": 0}), Param("offset", {"type": "integer", "minimum": 0})),
          response=OBJ),
    Route("POST", "/v1/dag-instances/counts", "dag_instance_counts", "Jobs by state for each instance", dh.instance_counts,
          body=OBJ, response=OBJ),
    Route("POST", f"/v1/dag-instances/{ID}/retry", "retry_dag_instance", "Run an instance's failed and killed jobs again",
          dh.retry_instance, response=OBJ),
    # DB maintenance, for the site's owner on any host (the agent runs it on the home host)
    Route("POST", "/v1/db/check", "db_check", "SQLite integrity and the store's consistency; fix: repair what can be", mh.db_check,
          body=_obj({"fix": BOOL}), response=OBJ, alone=True),
    Route("POST", "/v1/db/backup", "db_backup", "An online copy of the DB at dest (an absolute path the agent writes)", mh.db_backup,
          body=_obj({"dest": STR, "force": BOOL}, required=("dest",)), response=OBJ, alone=True),
    Route("POST", "/v1/db/vacuum", "db_vacuum", "Compact the DB (writers wait meanwhile)", mh.db_vacuum, response=OBJ, alone=True),
    Route("GET", "/v1/ws", "ws", "WebSocket of state changes ({type, site_id, id, state, ts}); ?token= for browsers", None,
          query=(Param("token", {"type": "string"}),), response=OBJ, kind="ws"),
    Route("GET", "/", "dashboard", "The web dashboard", None, response={"type": "string"}, auth=False, kind="static"),
    Route("GET", "/assets/{path:path}", "dashboard_assets", "The dashboard's files", None, response={"type": "string"}, auth=False,
          kind="static"),
)


def openapi_path(path: str) -> str:
    """A route path in OpenAPI's form (``{path:path}`` -> ``{path}``)."""
    return path.replace(":path}", "}")


def openapi(routes: Tuple[Route, ...] = ROUTES) -> Dict[str, Any]:
    """The OpenAPI 3.0 document of ``routes``."""
    paths: Dict[str, Dict[str, Any]] = {}
    for r in routes:
        if r.kind in ("ws",):
            continue
        op: Dict[str, Any] = {"operationId": r.name, "summary": r.summary}
        params: List[Dict[str, Any]] = []
        for name in _path_names(r.path):
            schema: Dict[str, Any] = {"type": "integer", "minimum": 1} if name == "id" else {"type": "string"}
            params.append({"name": name, "in": "path", "required": True, "schema": schema})
        for p in r.query:
            entry: Dict[str, Any] = {"name": p.name, "in": "query", "required": False, "schema": p.schema}
            if p.description:
                entry["description"] = p.description
            if p.repeat:
                entry["style"] = "form"
                entry["explode"] = True
            params.append(entry)
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": r.body}}}
        content_type = "text/html" if r.kind == "static" else "application/json"
        responses: Dict[str, Any] = {str(r.status): {"description": "success", "content": {content_type: {"schema": r.response}}}}
        statuses = [404] if r.kind == "static" else [s for s in ERROR_STATUSES if r.auth or s not in (401,)]
        for status in statuses:
            responses[str(status)] = {"description": ERROR_STATUSES[status], "content": {"application/json": {"schema": ERROR}}}
        op["responses"] = responses
        if r.auth:
            op["security"] = [{"siteSignature": []}, {"bearer": []}]
        paths.setdefault(openapi_path(r.path), {})[r.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "Balsam API", "version": __version__,
                 "description": "The Balsam data model over HTTP: sites, apps, jobs, batch jobs, events, transfers, sessions."},
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "siteSignature": {"type": "apiKey", "in": "header", "name": "X-Balsam-Signature",
                                  "description": "HMAC-SHA256 under the site secret of method, path+query, X-Balsam-Time, "
                                                 "X-Balsam-Nonce and X-Balsam-Content-SHA256"},
            },
        },
    }


def _path_names(path: str) -> List[str]:
    out = []
    for part in path.split("/"):
        if part.startswith("{") and part.endswith("}"):
            out.append(part[1:-1].split(":")[0])
    return out
