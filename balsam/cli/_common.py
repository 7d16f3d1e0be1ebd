"""What every command group shares: option decorators, KEY=VALUE parsing, site selection, output helpers.

Kept light: importing this module costs click and the standard library only. Each option factory returns
a decorator, so commands read as a list of their flags::

    @job.command("ls")
    @job_filter_options
    @site_option()
    @json_option()
    def job_ls(...): ...
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, TypeVar

import click

from balsam.states import JobState

S = JobState

if TYPE_CHECKING:
    from balsam._api.sites import SiteRef

F = TypeVar("F", bound=Callable[..., Any])
ELLIPSIS = "…"


class CLIError(click.ClickException):
    """A one-line error with an exit code (1 by default; 2 for bad input)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(" ".join(str(message).split("\n")).strip())
        # click 8.5 declares exit_code a ClassVar; each CLIError still carries its own.
        setattr(self, "exit_code", exit_code)  # noqa: B010


# ------------------------------------------------------------------------------------------- KEY=VALUE
def parse_kv(items: Iterable[str], option: str) -> Dict[str, str]:
    """``["k=v", ...]`` as a dict; a usage error names the option and the bad item."""
    out: Dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=f"'{option}'")
        if out.get(key, value) != value:  # which one was meant? (the last was kept silently)
            raise click.BadParameter(f"{key!r} is given twice ({key}={out[key]} and {item})", param_hint=f"'{option}'")
        out[key] = value
    return out


def _kv_callback(option: str) -> Callable[[click.Context, click.Parameter, Tuple[str, ...]], Dict[str, str]]:
    def callback(ctx: click.Context, param: click.Parameter, value: Tuple[str, ...]) -> Dict[str, str]:
        return parse_kv(value or (), option)

    return callback


def kv_option(*decls: str, help: str, metavar: str = "KEY=VALUE") -> Callable[[F], F]:
    """A repeatable ``KEY=VALUE`` option; the command receives a dict."""
    option = max((d for d in decls if d.startswith("-")), key=len)
    return click.option(*decls, multiple=True, metavar=metavar, callback=_kv_callback(option), help=help + " (repeatable)")


# ------------------------------------------------------------------------------------------- shared options
def site_option(help: str = "Site(s): a name, id, path fragment, 'this' or 'all' (comma-separated or repeated).",
                short: bool = False) -> Callable[[F], F]:
    """``--site``: which sites a command looks at (default: the current site, else every site on this host); ``-s``
    too where Balsam 0.7 had it (``app ls -s SITE``)."""
    return click.option("--site", *(["-s"] if short else []), "sites", multiple=True, metavar="SITE", help=help)


def json_option() -> Callable[[F], F]:
    """``--json``: machine-readable output on stdout."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")


def yes_option(help: str = "Do not ask for confirmation.") -> Callable[[F], F]:
    """``-y/--yes`` (also ``-f/--force``): skip the confirmation prompt."""
    return click.option("-y", "--yes", "-f", "--force", "yes", is_flag=True, help=help)


def _state_callback(ctx: click.Context, param: click.Parameter, value: Tuple[str, ...]) -> Tuple[str, ...]:
    from balsam.states import STORED_STATES, JobState

    names = [s.value for s in JobState if s in STORED_STATES]
    out = []
    for v in value:
        name = v.strip().upper()
        if name not in names:
            raise click.BadParameter(f"unknown job state {v!r} (valid: {', '.join(names)})", param_hint=f"'{param.opts[-1]}'")
        out.append(name)
    return tuple(out)


def state_option(*decls: str, help: str, multiple: bool = True) -> Callable[[F], F]:
    """A job state option (case-insensitive; an unknown state is a usage error listing the valid ones)."""
    return click.option(*decls, multiple=multiple, metavar="STATE", callback=_state_callback if multiple else _one_state, help=help)


def _one_state(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    return _state_callback(ctx, param, (value,))[0]


def tag_options(f: F) -> F:
    """``--tag K=V`` (repeatable) and ``--workflow X`` (the tag ``workflow=X``, as in Balsam 0.x)."""
    f = click.option("--workflow", metavar="NAME", help="Shortcut for --tag workflow=NAME.")(f)
    f = kv_option("-t", "--tag", "tags", help="Jobs having tag KEY=VALUE")(f)
    return f


def job_filter_options(state_decls: Tuple[str, ...] = ("-s", "--state")) -> Callable[[F], F]:
    """The job selection flags shared by ``job ls/modify/rm/reset/kill`` (``job modify`` moves the state
    filter off ``-s``, which there names the new state, as in Balsam)."""

    def decorate(f: F) -> F:
        f = click.option("-a", "--app", metavar="APP", help="Jobs of this app (name or id).")(f)
        f = click.option("-w", "--workdir", metavar="TEXT", help="Jobs whose workdir contains TEXT.")(f)
        f = state_option("-ns", "--exclude-state", "exclude_states", help="Jobs not in STATE (repeatable).")(f)
        f = state_option(*state_decls, "states", help="Jobs in STATE (repeatable).")(f)
        f = tag_options(f)
        f = click.option("-i", "--id", "ids", multiple=True, type=int, metavar="ID", help="Job id (repeatable).")(f)
        return f

    return decorate


def job_filters(
    ids: Sequence[int] = (),
    tags: Optional[Dict[str, str]] = None,
    workflow: Optional[str] = None,
    states: Sequence[str] = (),
    exclude_states: Sequence[str] = (),
    workdir: Optional[str] = None,
    app: Optional[str] = None,
) -> Dict[str, Any]:
    """Balsam Job filter keywords from the shared selection flags."""
    filters: Dict[str, Any] = {}
    tags = dict(tags or {})
    if workflow:
        tags["workflow"] = workflow
    if ids:
        filters["id"] = list(ids)
    if tags:
        filters["tags"] = tags
    if states:
        filters["state"] = list(states)
    if exclude_states:
        filters["state__ne"] = list(exclude_states)
    if workdir:
        filters["workdir__contains"] = workdir
    if app:
        if app.isdigit():
            filters["app_id"] = int(app)
        else:
            filters["app_name"] = app
    return filters


# ------------------------------------------------------------------------------------------- sites
def select_sites(selectors: Sequence[str]) -> List["SiteRef"]:
    """The sites chosen by ``--site`` values (none: the current site, else every site on this host)."""
    from balsam._api import sites as _sites

    return _sites.select(selectors)


def scope_sites(selectors: Sequence[str]) -> Tuple[List["SiteRef"], Dict[str, Any]]:
    """Select sites for an API query: returns them and the filter keywords that restrict a query to them.

    A single site becomes the process's current site, so a site reached by path need not be registered.
    """
    from balsam._api import sites as _sites

    refs = select_sites(selectors)
    if len(refs) == 1:
        _sites.use_site(refs[0].path)
        return refs, {}
    return refs, {"site_id": [r.id for r in refs]}


def site_root(site: Optional[str]) -> "Path":
    """The directory of the site a per-site command acts on: ``--site`` (a path, or the name or id of a site
    registered on this host, as every other command takes it), BALSAM_SITE_PATH, or the one around the working
    directory."""
    from pathlib import Path

    from balsam.exceptions import SiteNotFound
    from balsam.site import SiteLayout, find_site_root

    if site and "/" not in site and site not in (".", "..") and not SiteLayout(Path(site).resolve()).is_site():
        from balsam._api import sites as _sites

        ref = _sites.resolve(site)  # a name or id: the registry's entry (unknown: the known sites are named)
        if not ref.layout.is_site():
            raise SiteNotFound(f"--site {site}: site {ref.name!r} is reached through the relay; run this on its host")
        return ref.path
    root = find_site_root(site)
    if root is None:
        raise SiteNotFound("not inside a site: cd into one, pass --site PATH, or set BALSAM_SITE_PATH")
    return root


def one_site(selectors: Sequence[str], action: str = "this command") -> "SiteRef":
    """Exactly one site for commands that write (job create, queue submit, db ...); made the current site."""
    from balsam._api import sites as _sites

    refs = select_sites(selectors)
    if len(refs) != 1:
        names = ", ".join(r.name for r in refs)
        raise CLIError(f"{action} needs one site, and {len(refs)} are in scope ({names}): choose one with --site", 2)
    _sites.use_site(refs[0].path)
    return refs[0]


def note_if_agent_stopped(ref: "SiteRef", waits: str) -> None:
    """On the site's home host, say on stderr when its agent is not running (what was just created ``waits``
    for it): a first BatchJob or job would otherwise sit there with nothing saying why."""
    if not ref.is_home:
        return  # reached through the agent's API (or the relay, which applies it when the site syncs)
    from balsam.site import agent_running

    if agent_running(ref.layout) is None:
        click.echo(f"Note: the site agent of {ref.name} is not running, so {waits} until it starts: balsam site start --site {ref.name}",
                   err=True)


# ------------------------------------------------------------------------------------------- output
def to_jsonable(value: Any) -> Any:
    """Plain JSON data from API values: enums by value, datetimes in ISO 8601, bytes by size, paths as text."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    click.echo(json.dumps(to_jsonable(data), indent=2, ensure_ascii=False))


def format_time(value: Optional[_dt.datetime]) -> str:
    """A time in the local zone, to the second (empty for None)."""
    if value is None:
        return ""
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def echo_queued(handles: Iterable[Any]) -> int:
    """Say each write the relay queued for an offline site ("Kill of 3 jobs queued for site polaris (offline since
    ...) as command 7: applied when the site's agent next syncs"); how many were said."""
    seen: Set[int] = set()
    for h in handles:
        if h is None or h.command_id in seen:
            continue
        seen.add(h.command_id)
        click.echo(f"{h.what[:1].upper()}{h.what[1:]} {h.message}")
    return len(seen)


def plural(n: int, noun: str) -> str:
    """``1 job``, ``2 jobs``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def format_kv(d: Optional[Dict[str, Any]]) -> str:
    """``k=v k2=v2`` for tags and small dicts."""
    return " ".join(f"{k}={v}" for k, v in (d or {}).items())


def terminal_width() -> int:
    """The terminal's width (``COLUMNS`` wins; 120 when output is not a terminal)."""
    return max(shutil.get_terminal_size((120, 24)).columns, 40)


def _clip(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + ELLIPSIS if width > 0 else ""


_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """``text`` with its control characters (ESC, BEL, C1 codes) written as escapes (``\\x1b``) and line breaks as
    spaces: text a job or a remote tool wrote (an error message, a scheduler's answer) is shown, never obeyed by the
    terminal (an escape sequence there could retitle the window, clear the screen or set the clipboard)."""
    return _CONTROL.sub(lambda m: " " if m.group() == "\n" else repr(m.group())[1:-1], text)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], flex: Sequence[str] = (), width: Optional[int] = None,
                 styles: Optional[Dict[str, Callable[[str], str]]] = None) -> str:
    """Rows under headers, fitted to the terminal: the ``flex`` columns (the widest first) are truncated with
    an ellipsis until the table fits. Cells are converted with ``str``; None shows empty. ``styles`` maps a
    header to a function applied to that column's padded cells (colour), after the widths are fixed."""
    cells = [["" if c is None else visible(str(c)) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    total = width if width is not None else terminal_width()
    avail = total - 2 * (len(headers) - 1)
    flexible = [i for i, h in enumerate(headers) if h in flex]
    minimum = {i: max(min(len(headers[i]), 10), 4) for i in flexible}
    excess = sum(widths) - avail
    while excess > 0:
        shrinkable = [i for i in flexible if widths[i] > minimum[i]]
        if not shrinkable:
            break
        shrinkable.sort(key=lambda i: widths[i], reverse=True)
        top = shrinkable[0]
        second = widths[shrinkable[1]] if len(shrinkable) > 1 else minimum[top]
        step = max(1, min(excess, widths[top] - max(second, minimum[top])))
        widths[top] -= step
        excess -= step
    lines = []
    styled = {i: (styles or {})[h] for i, h in enumerate(headers) if h in (styles or {})}
    for n, row in enumerate([list(headers), *cells]):
        parts = [_clip(c, widths[i]).ljust(widths[i]) for i, c in enumerate(row)]
        if n:
            parts = [styled[i](p) if i in styled else p for i, p in enumerate(parts)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], flex: Sequence[str] = (),
               styles: Optional[Dict[str, Callable[[str], str]]] = None) -> None:
    """Print :func:`render_table` (``styles`` only on a terminal: pipes and files get plain text)."""
    click.echo(render_table(headers, rows, flex, styles=styles if _stdout_is_tty() else None))


def _stdout_is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


# ------------------------------------------------------------------------------------------- prompts, progress
def is_interactive() -> bool:
    """True when a person is at the terminal (stdin and stdout are ttys)."""
    try:
        return sys.stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def confirm(question: str, yes: bool, refusal: str) -> None:
    """Ask ``question`` unless ``yes``; without a terminal, refuse with ``refusal`` (a hint to pass -y)."""
    if yes:
        return
    if not is_interactive():
        raise CLIError(f"{refusal}; pass -y (or --force) to confirm without a prompt", 1)
    if not click.confirm(question, default=False):
        raise CLIError("nothing done", 1)


@contextmanager
def progress(length: int, label: str, threshold: int = 2000, quiet: bool = False) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr for long operations (on a terminal, for ``length >= threshold``).

    Yields ``advance(n)``; without a terminal, or ``quiet`` (``--json``), it does nothing, so logs and pipes stay
    clean.
    """
    if quiet or length < threshold or not sys.stderr.isatty():
        yield lambda n: None
        return
    with click.progressbar(length=length, label=label, file=sys.stderr) as bar:
        yield bar.update


@contextmanager
def working(label: str, enabled: bool = True, measure: Optional[Callable[[], str]] = None) -> Iterator[None]:
    """A counter on stderr while one long step runs that cannot report its own progress (a transaction, an
    online backup): ``label 3 s`` (and ``measure()``, e.g. bytes copied), then ``label done in 4 s``. Only on a
    terminal and when ``enabled`` (pass False for small selections and for ``--json``)."""
    if not enabled or not sys.stderr.isatty():
        yield
        return
    import threading
    import time

    done = threading.Event()
    start = time.monotonic()

    def tick() -> None:
        while not done.wait(0.5):
            extra = f" {measure()}" if measure else ""
            sys.stderr.write(f"\r{label} {time.monotonic() - start:.0f} s{extra}   ")
            sys.stderr.flush()

    thread = threading.Thread(target=tick, name="balsam-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        sys.stderr.write(f"\r{label} done in {time.monotonic() - start:.1f} s\n")
        sys.stderr.flush()


STATE_COLORS: Dict[str, str] = {S.JOB_FINISHED: "green", S.RUN_DONE: "green", S.POSTPROCESSED: "green", S.STAGED_OUT: "green",
                S.RUNNING: "cyan", S.FAILED: "red", S.RUN_ERROR: "red", S.RUN_TIMEOUT: "yellow", S.USER_KILLED: "magenta",
                S.RESTART_READY: "yellow", S.AWAITING_PARENTS: "blue"}


def color_state(text: str) -> str:
    """A job state coloured for a terminal (the padded cell: colour codes never upset column widths)."""
    color = STATE_COLORS.get(text.strip())
    return click.style(text, fg=color) if color else text
