"""The ``balsam`` command line: one click group module per noun, thin over the Python API.

Start-up matters (``balsam job ls`` runs in scripts and loops), so the root group is *lazy*: :data:`COMMANDS`
maps each command name to ``"module:attribute"`` plus its one-line help, ``balsam --help`` prints the table
without importing any command module, and a command's module is imported only when it runs. Command
modules in turn import ``balsam.api``, ``yaml``, ``jinja2`` and ``psutil`` inside the commands that use them.

Errors are translated at this boundary: a :class:`~balsam.exceptions.BalsamError` (or a database or OS
error) becomes one line ``Error: ...`` on stderr and the error's exit code (usage errors exit 2); Ctrl-C
exits 130 quietly. ``BALSAM_DEBUG=1`` lets the exception through with its traceback.

Adding a command: write ``balsam/cli/<noun>.py`` with a click group or command and add a row to
:data:`COMMANDS`. Rows marked optional are listed only when their module exists (the launcher's command
lives in ``balsam/cli/launcher.py``, written by the launcher's owner).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, NamedTuple, NoReturn, Optional, Sequence, Tuple

import click

from balsam import __version__


class Entry(NamedTuple):
    """One row of the lazy command table."""

    target: str
    """``"package.module:attribute"`` of the click command."""
    help: str
    """The one-line help shown by ``balsam --help`` (kept here so listing imports nothing)."""
    section: str = "Commands"
    optional: bool = False
    """List the command only if its module exists."""


COMMANDS: Dict[str, Entry] = {
    "site": Entry("balsam.cli.site:site", "Create, list, move, rename and remove sites."),
    "app": Entry("balsam.cli.app:app", "List, sync and remove applications."),
    "job": Entry("balsam.cli.job:job", "Create, list, modify, reset, kill and remove jobs."),
    "queue": Entry("balsam.cli.queue:queue", "Submit, list and cancel BatchJobs (pilot allocations)."),
    "relay": Entry("balsam.cli.relay:relay", "Run and administer the optional relay: users, tokens, its database."),
    "login": Entry("balsam.cli.login:login", "Log in to a relay (token saved 0600) to reach your sites from anywhere."),
    "logout": Entry("balsam.cli.login:logout", "Revoke and forget this host's relay token."),
    "dag": Entry("balsam.cli.dag:dag", "Create, show and run DAG templates; watch, kill and retry instances."),
    "transfer": Entry("balsam.cli.transfer:transfer", "List the data staged in and out of jobs."),
    "db": Entry("balsam.cli.db:db", "Check, back up, compact and migrate a site's database."),
    "which": Entry("balsam.cli.which:which", "Show which site, database and Balsam this shell uses."),
    "service": Entry("balsam.cli.service:service", "Start, stop and inspect the site agent (also 'site start/stop/status')."),
    "docs": Entry("balsam.cli.docs:docs", "Read the documentation offline (the README, by section): balsam docs TOPIC."),
    "ui": Entry("balsam.cli.ui:ui", "Serve the web dashboard of a site on this host (prints the link and the ssh -L line)."),
    "launcher": Entry("balsam.cli.launcher:launcher", "Run the pilot launcher inside an allocation.", optional=True),
    # Balsam 0.x names that users still type.
    "submit-launch": Entry("balsam.cli.queue:queue_submit", "Alias of 'queue submit'.", "Balsam 0.x aliases"),
    "init": Entry("balsam.cli.site:site_init", "Alias of 'site init'.", "Balsam 0.x aliases"),
    "ls": Entry("balsam.cli.job:job_ls", "Alias of 'job ls'.", "Balsam 0.x aliases"),
    "modify": Entry("balsam.cli.job:job_modify", "Alias of 'job modify'.", "Balsam 0.x aliases"),
    "rm": Entry("balsam.cli.job:job_rm", "Alias of 'job rm'.", "Balsam 0.x aliases"),
    "killjob": Entry("balsam.cli.job:job_kill", "Alias of 'job kill'.", "Balsam 0.x aliases"),
    "dep": Entry("balsam.cli.job:job_dep", "Alias of 'job dep'.", "Balsam 0.x aliases"),
}


def _module_exists(target: str) -> bool:
    import importlib.util

    module = target.partition(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


RETIRED: Dict[str, str] = {
    "register": "there is no server to register with: each site keeps its jobs in its own database "
                "(the optional relay's users are added with 'balsam relay user add')",
    "server": "there is no server to run: each site keeps its jobs in its own database "
              "('balsam relay serve' runs the optional relay; 'balsam ui' the dashboard)",
    "launch": "the pilot runs inside an allocation: 'balsam queue submit' (or 'balsam launcher' within one)",
    "make_dummies": "create jobs with 'balsam job create' (many at once: --from FILE)",
}
"""Commands of Balsam 0.x/0.7 that have no counterpart, with what to do instead (said when one is typed)."""


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """`` (Did you mean 'x'?)`` naming the choices closest to a mistyped ``word``, or ``""``."""
    import difflib

    lowered = {c.lower(): c for c in choices}
    matches = difflib.get_close_matches(word.lower(), list(lowered), n=3, cutoff=0.6)
    matches += [c for c in lowered if len(word) >= 2 and c.startswith(word.lower()) and c not in matches]
    if not matches:
        return ""
    names = [repr(lowered[m]) for m in matches[:3]]
    # Phrased as click phrases a mistyped option.
    return f" (Did you mean {names[0]}?)" if len(names) == 1 else f" (Did you mean one of: {', '.join(names)}?)"


class SuggestingGroup(click.Group):
    """A click group that answers a mistyped subcommand with the closest names, and a retired Balsam 0.x/0.7
    command with what replaced it. Its subgroups (``@group.group()``) are of the same kind."""

    group_class = type

    def resolve_command(self, ctx: click.Context, args: List[str]) -> Tuple[Optional[str], Optional[click.Command], List[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and not ctx.resilient_parsing and self.get_command(ctx, name) is None:
            if name in RETIRED and ctx.parent is None:
                ctx.fail(f"'{name}' is not a command here: {RETIRED[name]}.")
            # Loaded commands may be hidden (internal); a lazy one is listed without importing its module.
            visible = [n for n in self.list_commands(ctx) if not getattr(self.commands.get(n), "hidden", False)]
            ctx.fail(f"No such command {name!r}.{did_you_mean(name, visible) or _in_another_group(ctx, name)}")
        return super().resolve_command(ctx, args)


def _in_another_group(ctx: click.Context, name: str) -> str:
    """`` (Did you mean 'balsam db migrate'?)`` when ``name`` is a command of another group than the one it was given
    to (``balsam site migrate``, ``balsam job submit``), or ``""``. Only on this error path are the groups loaded."""
    root = ctx.find_root()
    if ctx.parent is None or not isinstance(root.command, click.Group):
        return ""
    found = []
    for group_name in root.command.list_commands(root):
        try:
            group = root.command.get_command(root, group_name)
        except Exception:  # a group whose optional dependency is broken here: the error being reported matters more
            continue
        if isinstance(group, click.Group) and group is not ctx.command and group.get_command(root, name) is not None:
            found.append(repr(f"{root.info_name or 'balsam'} {group_name} {name}"))
    if not found:
        return ""
    return f" (Did you mean {found[0]}?)" if len(found) == 1 else f" (Did you mean one of: {', '.join(found[:3])}?)"


class LazyGroup(SuggestingGroup):
    """A click group whose subcommands are imported on first use, from a name -> :class:`Entry` table."""

    def __init__(self, *args: Any, lazy: Optional[Dict[str, Entry]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: Dict[str, Entry] = dict(lazy or {})
        self._available: Optional[List[str]] = None

    def _lazy_names(self) -> List[str]:
        if self._available is None:
            self._available = [n for n, e in self.lazy.items() if not e.optional or _module_exists(e.target)]
        return self._available

    def list_commands(self, ctx: click.Context) -> List[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._lazy_names()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in self._lazy_names():
            return cmd
        import importlib

        module_name, _, attr = self.lazy[cmd_name].target.partition(":")
        module = importlib.import_module(module_name)
        found = getattr(module, attr, None)
        if not isinstance(found, click.Command):
            # Tolerate a module that names its command differently: take the one command named like the row.
            found = next((v for v in vars(module).values() if isinstance(v, click.Command) and v.name == cmd_name), None)
        if found is None:
            raise click.ClickException(f"internal error: {self.lazy[cmd_name].target} is not a click command")
        return found

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: Dict[str, List[Tuple[str, str]]] = {"Commands": []}
        for name in super().list_commands(ctx):
            cmd = super().get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                sections["Commands"].append((name, cmd.get_short_help_str(formatter.width)))
        for name in self._lazy_names():
            entry = self.lazy[name]
            sections.setdefault(entry.section, []).append((name, entry.help))
        for title, rows in sections.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows if self.lazy is COMMANDS and title == "Commands" else sorted(rows))


def _debug() -> bool:
    return os.environ.get("BALSAM_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def translate_error(exc: BaseException) -> click.ClickException:
    """Turn an exception raised by a command into the one-line error the user sees, with its exit code."""
    import sqlite3

    from balsam.cli._common import CLIError
    from balsam.exceptions import BalsamError

    if isinstance(exc, BalsamError):
        return CLIError(str(exc), exc.exit_code)
    if isinstance(exc, UnicodeEncodeError):  # text from outside that no file, database or terminal here can take
        bad = exc.object[exc.start:exc.end] if isinstance(exc.object, str) else exc.object
        if exc.encoding.replace("-", "").lower() == "utf8":
            return CLIError(f"{bad!r} is not valid Unicode text (bytes that are not UTF-8?)", 2)
        return CLIError(f"cannot write {bad!r} as {exc.encoding} (use a UTF-8 locale, e.g. LANG=C.UTF-8)", 1)
    if isinstance(exc, sqlite3.Error):
        return CLIError(f"site database error: {exc}", 1)
    if isinstance(exc, FileNotFoundError) and not exc.filename and not _cwd_exists():
        return CLIError("the working directory no longer exists: cd to one that does, or give absolute paths", 1)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return CLIError(f"{where}{exc.strerror or exc}", 1)
    return CLIError(f"unexpected {type(exc).__name__}: {exc} (run with BALSAM_DEBUG=1 to see the traceback)", 1)


def _cwd_exists() -> bool:
    try:
        os.getcwd()
    except FileNotFoundError:
        return False
    return True


class BalsamCLI(LazyGroup):
    """The root group: lazy subcommands; every error becomes one line and an exit code (see the module doc)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, BrokenPipeError):
            raise  # a closed pipe (balsam job ls -v | head) ends quietly in main()
        except Exception as exc:
            if _debug():
                raise
            raise translate_error(exc) from exc

    def main(self, args: Optional[Sequence[str]] = None, prog_name: Optional[str] = None, complete_var: Optional[str] = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            # Without standalone mode click returns Exit's code (--help, --version) and raises the rest.
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"Error: {exc.format_message()}{hint}", err=True)
            code = exc.exit_code
        except click.ClickException as exc:
            exc.show()
            code = exc.exit_code
        except click.Abort as exc:
            if isinstance(exc.__context__, KeyboardInterrupt):
                code = 130  # Ctrl-C: quiet
            else:
                click.echo("Aborted.", err=True)
                code = 1
        except KeyboardInterrupt:
            code = 130
        _exit(code)


EPILOG = """\b
Site selection: commands that query jobs, apps or BatchJobs take --site SITE (a name, an id, a path
fragment, 'this' for the site around the working directory, or 'all'); without it they use the site
around the working directory (or BALSAM_SITE_PATH), else every site on this host.
\b
Shell completion (bash; zsh and fish alike):
  eval "$(_BALSAM_COMPLETE=bash_source balsam)"
\b
Errors print one line and exit non-zero; BALSAM_DEBUG=1 shows the traceback.
"""


@click.group(cls=BalsamCLI, lazy=COMMANDS, epilog=EPILOG, context_settings={"max_content_width": 110})
@click.version_option(__version__, "--version", "-V", prog_name="balsam")
def cli() -> None:
    """Balsam: HPC workflows with an embedded per-site SQLite store.

    \b
    Examples:
      balsam site init ./my-site
      balsam app sync apps.py
      balsam job create -a Hello -w demo/hello -p say_hello_to=world
      balsam job ls --by-state
      balsam queue submit -n 1 -t 10 -q local -A local -j mpi
      balsam docs                       (the documentation, offline)
    """


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of the ``balsam`` command: runs :func:`cli` and exits with its status."""
    # Started with stdout or stderr closed (``balsam job ls >&-``): Python has no stream there, and the first write
    # or the final flush raised a traceback. Output then goes nowhere, as it does when the reader of a pipe has gone.
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 - lives as long as the process
    try:
        cli.main(args=argv, prog_name="balsam")
    except BrokenPipeError:
        _quiet_broken_pipe()


def _exit(code: int) -> NoReturn:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_broken_pipe()
    sys.exit(code)


def _quiet_broken_pipe() -> NoReturn:
    # The reader went away (balsam job ls | head): stop quietly, without a second error at interpreter exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(0)


__all__ = ["COMMANDS", "Entry", "LazyGroup", "RETIRED", "SuggestingGroup", "cli", "did_you_mean", "main", "translate_error"]
