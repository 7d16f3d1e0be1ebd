"""``balsam relay``: run and administer the optional relay (users, tokens, its database).

Examples::

    balsam relay migrate --db postgresql+psycopg://balsam@dbhost/balsam
    balsam relay user add alice                 # prints a one-time password (or --password-stdin)
    balsam relay user ls
    balsam relay token ls alice
    balsam relay token revoke alice 7

The database defaults to ``relay.db`` in ``$BALSAM_HOME/relay/`` (``~/.balsam/relay/``); ``--db`` or
``BALSAM_RELAY_DB`` name another (SQLite path URL or PostgreSQL). Needs ``pip install 'balsam[relay]'``.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional, TypeVar

import click

from balsam.cli import SuggestingGroup
from balsam.cli._common import CLIError, echo_json, echo_table, format_time, json_option

F = TypeVar("F", bound=Callable[..., Any])


def db_option(f: F) -> F:
    """``--db URL``: the relay's database."""
    return click.option("--db", "db_url", envvar="BALSAM_RELAY_DB", metavar="URL",
                        help="The relay's database (default: sqlite in $BALSAM_HOME/relay/relay.db).")(f)  # type: ignore[return-value]


def open_relay(db_url: Optional[str], migrate: bool = True) -> Any:
    """The RelayStore for ``--db`` (its schema brought up to date)."""
    try:
        from balsam.relay.store import RelayStore, default_url
    except ImportError as exc:
        raise CLIError(f"the relay needs its extra: pip install 'balsam[relay]' ({exc.name} is missing)", 2) from None
    if not db_url:
        from balsam.site import balsam_home

        folder = balsam_home() / "relay"
        folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # BALSAM_HOME: private, as the registry makes it
        folder.mkdir(exist_ok=True, mode=0o700)
        db_url = default_url(folder)
    store = RelayStore(db_url)
    if migrate:
        try:
            store.migrate()
        except Exception as exc:  # a DB that cannot be reached or read: one line
            raise CLIError(f"cannot open the relay database {_safe(db_url)}: {str(exc).splitlines()[0]}", 1) from None
    return store


def _safe(url: str) -> str:
    """A URL without its password, for messages."""
    import re

    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


@click.group(cls=SuggestingGroup)
def relay() -> None:
    """Run and administer the relay: users, tokens, its database.

    Example: balsam relay user add alice
    """


@relay.command("migrate")
@db_option
def relay_migrate(db_url: Optional[str]) -> None:
    """Create or upgrade the relay's database schema.

    Example: balsam relay migrate --db postgresql+psycopg://balsam@dbhost/balsam
    """
    from balsam.relay.migrate import current

    store = open_relay(db_url)
    click.echo(f"The relay database {_safe(store.url)} is at schema revision {current(store)}.")


@relay.command("serve")
@db_option
@click.option("--bind", default="127.0.0.1:8443", show_default=True, metavar="HOST:PORT",
              help="Where to listen (port 0: any free port). Other than this host needs TLS.")
@click.option("--tls-cert", default="", metavar="PEM", help="TLS certificate (with --tls-key).")
@click.option("--tls-key", default="", metavar="PEM", help="TLS private key.")
@click.option("--max-connections", default=1000, show_default=True, type=click.IntRange(16, 100_000),
              help="Connections held at once; one address may hold a quarter of them, one user's tokens an eighth.")
def relay_serve(db_url: Optional[str], bind: str, tls_cert: str, tls_key: str, max_connections: int) -> None:
    """Serve the /v1 API for every user's sites (runs until interrupted).

    Example: balsam relay serve --db postgresql+psycopg://balsam@dbhost/balsam --bind 0.0.0.0:8443 --tls-cert c.pem --tls-key k.pem
    """
    import signal
    import threading

    from balsam.exceptions import BalsamError

    host, _, port_text = bind.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port_text.isdigit() or int(port_text) > 65535:
        raise CLIError(f"--bind {bind!r}: expected HOST:PORT", 2)
    if bool(tls_cert) != bool(tls_key):
        raise CLIError("--tls-cert and --tls-key go together", 2)
    store = open_relay(db_url)
    from balsam.http.serve import ApiServer
    from balsam.relay.server import build_relay_app, check_transport, relay_options

    try:
        check_transport(host, bool(tls_cert))
        server = ApiServer(build_relay_app(store), relay_options(host, int(port_text), tls_cert, tls_key, max_connections))
        server.start()
    except (BalsamError, OSError) as e:
        raise CLIError(f"cannot serve the relay on {bind}: {str(e).splitlines()[0]}", 1) from None
    scheme = "https" if tls_cert else "http"
    click.echo(f"The relay serves {scheme}://{host}:{server.port} (database {_safe(store.url)}); Ctrl-C stops it.", err=False)
    sys.stdout.flush()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        store.close()


@relay.group("user")
def relay_user() -> None:
    """Add, list and change the relay's users.

    Example: balsam relay user add alice
    """


@relay_user.command("add")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input instead of making one.")
@db_option
def relay_user_add(name: str, password_stdin: bool, db_url: Optional[str]) -> None:
    """Add a user; prints a one-time password unless --password-stdin gives one.

    Example: balsam relay user add alice
    """
    from balsam.relay.auth import one_time_password

    password = sys.stdin.readline().rstrip("\n") if password_stdin else one_time_password()
    open_relay(db_url).add_user(name, password)
    if password_stdin:
        click.echo(f"Added user {name}.")
    else:
        click.echo(f"Added user {name}. Password (shown once): {password}")


@relay_user.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the new password from standard input instead of making one.")
@db_option
def relay_user_passwd(name: str, password_stdin: bool, db_url: Optional[str]) -> None:
    """Set a user's password (prints a new one-time password unless --password-stdin gives one) and revoke all the
    user's tokens: logins end at once (open dashboards and streams too), and sites linked with the old password
    must be linked again (`balsam site link URL`).

    Example: echo 'new secret' | balsam relay user passwd alice --password-stdin
    """
    from balsam.relay.auth import one_time_password

    password = sys.stdin.readline().rstrip("\n") if password_stdin else one_time_password()
    revoked = open_relay(db_url).set_password(name, password)
    click.echo(f"Changed the password of {name}." + ("" if password_stdin else f" New password (shown once): {password}"))
    logins, sites = revoked.get("user", 0), revoked.get("site", 0)
    click.echo(f"Revoked {name}'s tokens: {logins} login{'' if logins == 1 else 's'}, {sites} site agent{'' if sites == 1 else 's'}"
               + (f" ({name} must link {'that site' if sites == 1 else 'those sites'} again: balsam site link URL)." if sites else "."))


@relay_user.command("ls")
@db_option
@json_option()
def relay_user_ls(db_url: Optional[str], as_json: bool) -> None:
    """List the relay's users.

    Example: balsam relay user ls
    """
    import datetime as dt

    users = open_relay(db_url).users()
    if as_json:
        echo_json(users)
        return
    echo_table(["ID", "Name", "Created", "Disabled"],
               [[u["id"], u["name"], format_time(dt.datetime.fromtimestamp(u["created"], dt.timezone.utc)), "yes" if u["disabled"] else ""]
                for u in users])


@relay.group("token")
def relay_token() -> None:
    """List and revoke a user's tokens (logins and site agents).

    Example: balsam relay token ls alice
    """


@relay_token.command("ls")
@click.argument("user")
@db_option
@json_option()
def relay_token_ls(user: str, db_url: Optional[str], as_json: bool) -> None:
    """List a user's tokens: kind, site, label, expiry, revoked (never the tokens themselves).

    Example: balsam relay token ls alice
    """
    import datetime as dt

    store = open_relay(db_url)
    rows = store.tokens(store.user_id(user))
    if as_json:
        echo_json(rows)
        return

    def when(ts: Optional[float]) -> str:
        return format_time(dt.datetime.fromtimestamp(ts, dt.timezone.utc)) if ts else ""

    echo_table(["ID", "Kind", "Site", "Label", "Created", "Expires", "Revoked"],
               [[r["id"], r["kind"], r["site_id"] or "", r["label"], when(r["created"]), when(r["expires"]), "yes" if r["revoked"] else ""]
                for r in rows], flex=["Label"])


@relay_token.command("revoke")
@click.argument("user")
@click.argument("token_id", type=int)
@db_option
def relay_token_revoke(user: str, token_id: int, db_url: Optional[str]) -> None:
    """Revoke one of a user's tokens (it stops working at once).

    Example: balsam relay token revoke alice 7
    """
    store = open_relay(db_url)
    store.revoke(store.user_id(user), token_id)
    click.echo(f"Revoked token {token_id} of {user}.")
