"""Globus credentials: the native-app login flow and the token file (mode 0600), refreshed as they expire.

``login(client_id, token_path, ask)`` prints the authorization URL, reads the code the user pastes, and stores
the Transfer tokens (including the refresh token). ``transfer_client(client_id, token_path)`` builds a
TransferClient whose authorizer refreshes the access token when it expires and writes the new one back.
The file holds only the Transfer resource server's tokens, as JSON, and is created with mode 0600 (never
world- or group-readable, also while it is written).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from balsam.exceptions import ConfigError, TransferError
from balsam.platforms.transfer.globus import require_sdk

TRANSFER_RESOURCE = "transfer.api.globus.org"
CLIENT_ID_HINT = ("set transfers.globus_client_id in settings.yml to a Globus native app's client id "
                  "(register one at https://app.globus.org/settings/developers)")


def save_tokens(path: Path, tokens: Dict[str, Any]) -> None:
    """Write the token file atomically with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, json.dumps(tokens, indent=1).encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_tokens(path: Path) -> Dict[str, Any]:
    """Read the token file; a clear error if it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise TransferError("globus: not logged in to Globus; run: balsam site globus-login", transient=True) from None
    except (OSError, ValueError) as exc:
        raise TransferError(f"globus: cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not data.get("refresh_token"):
        raise TransferError(f"globus: {path} holds no refresh token; run: balsam site globus-login", transient=True)
    return data


def login(client_id: Optional[str], token_path: Path, ask: Callable[[str], str], say: Callable[[str], None],
          auth_client: Any = None) -> Dict[str, Any]:
    """Run the native-app flow: show the URL, read the code, store the Transfer tokens; return them."""
    sdk = require_sdk()
    if not client_id:
        raise ConfigError(f"globus-login: no client id; {CLIENT_ID_HINT}")
    client = auth_client if auth_client is not None else sdk.NativeAppAuthClient(client_id)
    client.oauth2_start_flow(requested_scopes=[sdk.scopes.TransferScopes.all], refresh_tokens=True)
    say("Open this URL, log in to Globus, and paste the authorization code it shows:")
    say(client.oauth2_get_authorize_url())
    code = ask("Authorization code").strip()
    if not code:
        raise ConfigError("globus-login: no authorization code given")
    try:
        response = client.oauth2_exchange_code_for_tokens(code)
    except sdk.GlobusAPIError as exc:
        raise TransferError(f"globus-login: Globus refused the code: {getattr(exc, 'message', exc)}") from None
    tokens = dict(response.by_resource_server[TRANSFER_RESOURCE])
    tokens["client_id"] = client_id
    save_tokens(token_path, tokens)
    return tokens


def transfer_client(client_id: Optional[str], token_path: Path, auth_client: Any = None) -> Any:
    """A TransferClient authorized by the stored tokens; refreshed tokens are written back (0600)."""
    sdk = require_sdk()
    tokens = load_tokens(token_path)
    client_id = client_id or tokens.get("client_id")
    if not client_id:
        raise ConfigError(f"globus: no client id; {CLIENT_ID_HINT}")
    client = auth_client if auth_client is not None else sdk.NativeAppAuthClient(client_id)

    def on_refresh(response: Any) -> None:
        """Keep the refreshed access token (the refresh token stays)."""
        fresh = dict(response.by_resource_server[TRANSFER_RESOURCE])
        fresh.setdefault("refresh_token", tokens["refresh_token"])
        fresh["client_id"] = client_id
        save_tokens(token_path, fresh)

    authorizer = sdk.RefreshTokenAuthorizer(
        tokens["refresh_token"], client, access_token=tokens.get("access_token"),
        expires_at=tokens.get("expires_at_seconds"), on_refresh=on_refresh,
    )
    return sdk.TransferClient(authorizer=authorizer)
