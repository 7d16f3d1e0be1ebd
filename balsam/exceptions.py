"""The exception tree. Every error Balsam raises on purpose derives from :class:`BalsamError`.

::

    BalsamError
    ├── ConfigError               settings.yml or an argument is malformed (names the key)
    ├── SiteError                 the site cannot be found, registered or opened
    │   ├── SiteNotFound
    │   └── ForeignHostError      the site DB belongs to another host (DESIGN.md section 3)
    ├── StoreError                the site DB itself: corrupt, locked, newer schema
    │   └── SchemaError
    ├── ValidationError           bad input: unknown filter keyword, parameter, absolute workdir, ...
    │   ├── IllegalTransition     a job state change the state machine refuses
    │   └── ReadOnlyError         a write to the EventLog (also an AttributeError, as in Balsam 0.7)
    ├── JobLockedError            an operation on jobs held by a live launcher session
    ├── SessionExpired            a lease that is gone (expired or released) was used
    ├── ObjectDoesNotExist        (each model's ``DoesNotExist`` derives from it)
    ├── MultipleObjectsReturned   (each model's ``MultipleObjectsReturned`` derives from it)
    ├── AppError                  an ApplicationDefinition cannot be defined, saved or loaded
    ├── SchedulerError            a batch scheduler command failed (carries argv, stdout, stderr, rc)
    │   └── SubmissionUnconfirmed a submit command ended without a clear answer: the job may have landed
    ├── LauncherError
    ├── TransferError
    ├── ServiceError              the site agent: not running, already running, unreachable
    └── ResultNotTrusted          a result read through the relay lacks the site's valid signature (not loaded)

The CLI turns any BalsamError into one line on stderr and a non-zero exit; ``BALSAM_DEBUG=1`` shows the
traceback instead.
"""

from __future__ import annotations

from typing import Optional, Sequence


class BalsamError(Exception):
    """Root of every error Balsam raises on purpose."""

    exit_code = 1


class ConfigError(BalsamError):
    """Settings or arguments are malformed."""

    exit_code = 2


class ObjectDoesNotExist(BalsamError, LookupError):
    """A ``get()`` matched nothing."""


class MultipleObjectsReturned(BalsamError, LookupError):
    """A ``get()`` matched more than one object."""


class SiteDoesNotExist(ObjectDoesNotExist):
    """No site matches: ``Site.DoesNotExist`` in the Python API, which catches every :class:`SiteNotFound` too (a
    Balsam 0.7 user catches that for an unknown ``site=`` of an app or ``site_name=`` of a job)."""


class AppDoesNotExist(ObjectDoesNotExist):
    """No app matches: ``App.DoesNotExist`` in the Python API, which catches every :class:`AppNotFound` too."""


class AppMultipleObjectsReturned(MultipleObjectsReturned):
    """More than one app matches: ``App.MultipleObjectsReturned`` in the Python API."""


class SiteError(BalsamError):
    """A site cannot be found, registered or opened."""


class SiteNotFound(SiteError, SiteDoesNotExist):
    """No site matches the given name, id or path."""


class ForeignHostError(SiteError):
    """The site DB belongs to another host: SQLite WAL must not be shared across hosts."""


class StoreError(BalsamError):
    """The site database is unusable: corrupt, unreadable, or locked past the timeout."""


class SchemaError(StoreError):
    """The site database has a schema this version of Balsam does not know."""


class ValidationError(BalsamError, ValueError):
    """Input that Balsam refuses: nothing was written."""

    exit_code = 2


class IllegalTransition(ValidationError):
    """A job state change that the state machine does not allow."""

    def __init__(self, message: str, job_id: Optional[int] = None) -> None:
        super().__init__(message)
        self.job_id = job_id


class ReadOnlyError(ValidationError, AttributeError):
    """A write to a read-only model (the EventLog): setting a field or creating a row. Also an AttributeError, which
    Balsam 0.7 raised there (``EventLog.objects.create`` had no ``create``; setting a field said it is read-only)."""


class JobLockedError(BalsamError):
    """Jobs are held by a live launcher or processing session."""

    def __init__(self, message: str, job_ids: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.job_ids = list(job_ids)


class SessionExpired(BalsamError):
    """A launcher or processing lease no longer exists: it expired or was released."""


class AppError(BalsamError):
    """An ApplicationDefinition cannot be defined, synced or loaded."""


class AppNotFound(AppError, ValidationError, AppDoesNotExist):
    """No app matches the name or id a job or a loader gave (``App.DoesNotExist`` catches it, as in Balsam 0.7)."""


class AppAmbiguous(ValidationError, AppMultipleObjectsReturned):
    """An app name matches apps at several sites (``App.MultipleObjectsReturned`` catches it)."""


class SchedulerError(BalsamError):
    """A batch scheduler command failed; carries what it printed."""

    def __init__(
        self,
        message: str,
        argv: Sequence[str] = (),
        returncode: Optional[int] = None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class SubmissionUnconfirmed(SchedulerError):
    """A submit command that ended without a clear answer: it hung and was killed at its timeout, died by a signal,
    lost its connection after sending the request, or exited 0 without printing a job id. The scheduler may have
    taken the job, so it must be looked up before it is submitted again (a clear refusal is a plain
    :class:`SchedulerError`)."""


class LauncherError(BalsamError):
    """The launcher cannot start or continue."""


class TransferError(BalsamError):
    """A data transfer failed; ``transient`` when trying again later may succeed (a lost connection)."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


GLOBUS_EXTRA_HINT = "Globus transfers need globus-sdk: pip install 'balsam[globus]'"
"""What a globus:// location needs where globus-sdk is not installed (said at job creation, site sync, the agent)."""


class ServiceError(BalsamError):
    """The site agent is not running, already running, or unreachable."""


class CommandPending(BalsamError):
    """A write made through the relay is queued for its site, which has not applied it yet (it is offline or
    busy): the write happens when the site next syncs. The message names the command (the provisional handle),
    and ``command_id`` holds it (``GET /v1/commands/{id}``; ``refresh_from_db()`` of a queued Job or BatchJob)."""

    def __init__(self, message: str = "", command_id: Optional[int] = None) -> None:
        super().__init__(message)
        self.command_id = command_id


class StaleVersion(BalsamError):
    """A write made on an old copy of a row: the row changed since (at its site). Nothing was written; the
    message says what the row is now. Reload it and try again (HTTP 409)."""


class ResultNotTrusted(BalsamError):
    """A ``run()`` result or exception read through the relay is not signed by its site with a result key this
    computer holds (or was changed since): it is not unpickled. The message says why and what to do
    (``balsam site key --trust``)."""
