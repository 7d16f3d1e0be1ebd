"""Globus: one Transfer task per batch (per pair of endpoints), through globus-sdk's TransferClient.

Items name their remote side ``ENDPOINT_UUID:/path`` and their local side as a path on this host; the local
side is rewritten to the site's own endpoint (``local_endpoint``) and to that endpoint's view of the site
folder (``site_path`` on this host becomes ``endpoint_site_path``). The task id is ``globus:<task uuid>``.
``poll`` reads the task: ACTIVE, INACTIVE (stalled: expired credentials, a paused endpoint; Globus's own
words are kept), SUCCEEDED, or FAILED with Globus's fatal error. HTTP errors keep Globus's code and message;
server errors (5xx) and network errors are transient, so the service tries again.

globus-sdk is an optional extra (``pip install 'balsam[globus]'``); without it, building this adapter says so.

Options: local_endpoint, site_path, endpoint_site_path, sync_level (exists|size|mtime|checksum, default
size), verify_checksum (default true), encrypt_data (default true), label (default "Balsam transfer").
"""

from __future__ import annotations

import datetime
import re
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

from balsam.exceptions import GLOBUS_EXTRA_HINT, ConfigError, TransferError
from balsam.platforms.runner import CommandRunner
from balsam.platforms.transfer.base import (
    PathLike,
    TransferAdapter,
    TransferItem,
    TransferState,
    TransferStatus,
    all_failed,
)

EXTRA_HINT = GLOBUS_EXTRA_HINT
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
SYNC_LEVELS = ("exists", "size", "mtime", "checksum")


def require_sdk() -> Any:
    """The globus_sdk module, or a ConfigError naming the extra that provides it."""
    try:
        import globus_sdk
    except ImportError:
        raise ConfigError(EXTRA_HINT) from None
    return globus_sdk


def sdk_installed() -> bool:
    """True when globus-sdk can be imported here."""
    try:
        require_sdk()
    except ConfigError:
        return False
    return True


def is_endpoint_id(text: str) -> bool:
    """True for a Globus endpoint (collection) UUID."""
    return bool(_UUID.match(text))


def split_globus(path: str) -> Tuple[str, str]:
    """``UUID:/path`` -> (UUID, /path); a local path -> ('', path)."""
    head, sep, rest = path.partition(":")
    if sep and is_endpoint_id(head):
        return head, rest
    return "", path


def _seconds_between(start: Any, end: Any) -> Optional[float]:
    try:
        a = datetime.datetime.fromisoformat(str(start).replace("Z", "+00:00"))
        b = datetime.datetime.fromisoformat(str(end).replace("Z", "+00:00"))
    except ValueError:
        return None
    return max((b - a).total_seconds(), 0.0)


def describe_api_error(exc: Any) -> Tuple[str, bool]:
    """Globus's own text for an SDK error, and whether trying again may help."""
    status = getattr(exc, "http_status", None)
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None) or str(exc)
    text = f"Globus {code or 'error'} (HTTP {status}): {message}" if status else f"Globus: {message}"
    transient = status is None or int(status) >= 500 or int(status) == 429
    return text, transient


class GlobusTransfer(TransferAdapter):
    """Submits and polls Globus Transfer tasks. ``client`` is a ready ``globus_sdk.TransferClient``, or
    ``client_factory`` builds one on first use (from stored tokens)."""

    name: ClassVar[str] = "globus"
    options_help = {
        "local_endpoint": "this site's Globus endpoint (collection) UUID",
        "site_path": "the site folder on this host",
        "endpoint_site_path": "the same folder as the endpoint sees it (default: the same path)",
        "sync_level": "exists, size, mtime or checksum (default size)",
        "verify_checksum": "true to verify checksums after transfer (default true)",
        "encrypt_data": "true to encrypt data in flight (default true)",
        "label": "task label shown in the Globus web app",
    }

    def __init__(
        self,
        runner: Optional[CommandRunner] = None,
        *,
        state_dir: Optional[PathLike] = None,
        env: Optional[Mapping[str, str]] = None,
        options: Optional[Mapping[str, str]] = None,
        client: Any = None,
        client_factory: Optional[Callable[[], Any]] = None,
    ) -> None:
        super().__init__(runner, state_dir=state_dir, env=env, options=options)
        self.sdk = require_sdk()
        level = self.options.get("sync_level", "size")
        if level not in SYNC_LEVELS:
            raise ConfigError(f"transfer globus: sync_level must be one of {', '.join(SYNC_LEVELS)}, got {level!r}")
        self._client = client
        self._client_factory = client_factory

    @property
    def client(self) -> Any:
        """The TransferClient (built on first use)."""
        if self._client is None:
            if self._client_factory is None:
                raise TransferError("globus: no Globus credentials; run: balsam site globus-login", transient=True)
            self._client = self._client_factory()
        return self._client

    def _endpoint_path(self, path: str) -> Tuple[str, str]:
        endpoint, rest = split_globus(path)
        if endpoint:
            return endpoint, rest
        local = self.options.get("local_endpoint", "")
        if not is_endpoint_id(local):
            raise TransferError("globus: this site has no Globus endpoint; set transfers.globus_endpoint_id in settings.yml")
        site, view = self.options.get("site_path", ""), self.options.get("endpoint_site_path", "")
        if site and view and (rest == site or rest.startswith(site.rstrip("/") + "/")):
            rest = view.rstrip("/") + rest[len(site.rstrip("/")):]
        return local, rest

    def build_data(self, items: Sequence[TransferItem]) -> Any:
        """The TransferData of one batch (every item must share one source and one destination endpoint)."""
        pairs = [(self._endpoint_path(i.source), self._endpoint_path(i.destination)) for i in items]
        endpoints = {(s[0], d[0]) for s, d in pairs}
        if len(endpoints) != 1:
            raise TransferError(f"globus: a task moves data between one pair of endpoints, this batch has {len(endpoints)}")
        src_ep, dst_ep = endpoints.pop()
        data = self.sdk.TransferData(
            source_endpoint=src_ep,
            destination_endpoint=dst_ep,
            label=self.options.get("label", "Balsam transfer"),
            sync_level=self.options.get("sync_level", "size"),
            verify_checksum=self.option_flag("verify_checksum", True),
            encrypt_data=self.option_flag("encrypt_data", True),
        )
        for item, ((_s, src), (_d, dst)) in zip(items, pairs):
            data.add_item(src, dst, recursive=bool(item.recursive))
        return data

    def submit(self, items: Sequence[TransferItem]) -> str:
        """Submit one Globus Transfer task for the batch; return ``globus:<task uuid>``."""
        if not items:
            raise TransferError("globus: nothing to transfer")
        data = self.build_data(items)
        try:
            result = self.client.submit_transfer(data)
        except self.sdk.GlobusAPIError as exc:
            text, transient = describe_api_error(exc)
            raise TransferError(text, transient=transient) from exc
        except self.sdk.NetworkError as exc:
            raise TransferError(f"Globus unreachable: {exc}", transient=True) from exc
        return f"globus:{result['task_id']}"

    def poll(self, task_id: str) -> TransferStatus:
        """The Globus task's status; a FAILED task carries Globus's reason for every item."""
        prefix, _, uuid = task_id.partition(":")
        if prefix != self.name or not is_endpoint_id(uuid):
            raise TransferError(f"globus: {task_id!r} is not a Globus task id")
        try:
            task = self.client.get_task(uuid)
        except self.sdk.GlobusAPIError as exc:
            text, transient = describe_api_error(exc)
            if transient:
                return TransferStatus(task_id, TransferState.ACTIVE, text)
            return all_failed(task_id, 0, text)
        except self.sdk.NetworkError as exc:
            return TransferStatus(task_id, TransferState.ACTIVE, f"Globus unreachable: {exc}")
        status = str(task.get("status", ""))
        nbytes = task.get("bytes_transferred")
        seconds = _seconds_between(task.get("request_time"), task.get("completion_time")) if task.get("completion_time") else None
        if status == "SUCCEEDED":
            return TransferStatus(task_id, TransferState.DONE, bytes=nbytes, seconds=seconds)
        if status == "FAILED":
            failed = all_failed(task_id, 0, failure_reason(task))  # no per-item list: every item failed
            failed.bytes, failed.seconds = nbytes, seconds
            return failed
        if status == "INACTIVE":
            return TransferStatus(task_id, TransferState.INACTIVE, str(task.get("nice_status_details") or task.get("nice_status") or "inactive"))
        return TransferStatus(task_id, TransferState.ACTIVE, str(task.get("nice_status") or ""))

    def cancel(self, task_id: str, grace_s: float = 5.0) -> None:
        """Ask Globus to cancel the task."""
        try:
            self.client.cancel_task(task_id.partition(":")[2])
        except self.sdk.GlobusAPIError as exc:
            raise TransferError(describe_api_error(exc)[0]) from exc


def failure_reason(task: Mapping[str, Any]) -> str:
    """Globus's own words for why a task failed."""
    fatal = task.get("fatal_error") or {}
    parts: List[str] = []
    if isinstance(fatal, Mapping) and (fatal.get("code") or fatal.get("description")):
        parts.append(f"{fatal.get('code', '')}: {fatal.get('description', '')}".strip(": "))
    details = task.get("nice_status_details") or task.get("nice_status")
    if details and str(details) not in " ".join(parts):
        parts.append(str(details))
    return "Globus task FAILED: " + ("; ".join(parts) or "no reason given")


def globus_options(settings: Dict[str, Any]) -> Dict[str, str]:
    """Adapter options from plain settings values (booleans as 'true'/'false')."""
    return {k: ("true" if v is True else "false" if v is False else str(v)) for k, v in settings.items() if v is not None and v != ""}
