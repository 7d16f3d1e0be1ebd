"""``balsam login`` and ``balsam logout``: a user's token for a relay, kept in ``$BALSAM_HOME`` (mode 0600).

With a login, a host with no site reaches the user's sites through the relay (``--site polaris``,
``site = "polaris"`` in Python), and ``balsam site link URL`` links a site to that relay.
"""

from __future__ import annotations

import sys
from typing import Optional

import click

from balsam.cli._common import CLIError


@click.command("login")
@click.argument("url", required=False)
@click.option("-u", "--user", help="Your user name at the relay (required with URL).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (else: a prompt).")
@click.option("--cafile", default="", metavar="PEM", help="CA bundle that signs the relay's certificate (self-signed relays).")
def login(url: Optional[str], user: Optional[str], password_stdin: bool, cafile: str) -> None:
    """Log in to a relay: the token is saved readable only by you. Sites need no login (Balsam 0.7's bare
    ``balsam login`` says so and succeeds).

    \b
    Example:
      balsam login https://relay.example.org -u alice
    """
    from balsam._api import relay
    from balsam.exceptions import BalsamError

    if url is None:
        click.echo("No login is needed: sites work offline on this host (balsam site init PATH, then balsam site start).\n"
                   "To reach your sites from anywhere through a relay: balsam login URL -u USER")
        return
    if not user:
        raise CLIError("balsam login URL needs -u/--user USER (your user name at the relay)", 2)

    password: Optional[str] = sys.stdin.readline().rstrip("\n") if password_stdin else click.prompt("Password", hide_input=True)
    try:
        record = relay.login(url, user, password or "", cafile)
    except BalsamError as e:
        raise CLIError(f"login to {url} failed: {str(e).splitlines()[0]}", 1) from None
    click.echo(f"Logged in to {record['url']} as {record['user']} (token saved; it expires {record.get('expires') or 'never'}).")


@click.command("logout")
def logout() -> None:
    """Revoke this host's relay token and forget it.

    \b
    Example:
      balsam logout
    """
    from balsam._api import relay

    url = relay.logout()
    click.echo(f"Logged out of {url}." if url else "Not logged in to a relay.")
