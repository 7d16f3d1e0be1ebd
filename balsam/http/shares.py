"""Each caller's share of a many-user server's connections (the relay).

A server holds at most ``max_connections`` connections (uvicorn answers 503 to every request past that). Without
shares, one logged-in user keeping hundreds of connections alive (a request on each every few seconds), or anyone
opening connections from one address, held every slot and locked everyone else out. So:

- one address holds at most ``per_address`` connections at once: the next one is answered 503 and closed;
- the requests of one relay user's tokens (their logins, or one site's agent) arrive on at most ``per_caller``
  connections at once: a request on one more connection is answered 429 and that connection closed.

A connection is known by its peer address (host, port). Everything runs on the server's event loop: no locks.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, Hashable, Optional, Set, Tuple

Peer = Tuple[Any, ...]
"""A connection's peer: (host, port, ...) as the socket or the ASGI scope gives it."""


def _key(peer: Peer) -> Tuple[str, int]:
    return str(peer[0]), int(peer[1])


def _less(counts: "Counter[Any]", key: Any) -> None:
    """One fewer of ``key`` in ``counts`` (gone at none: the counters hold only who holds something)."""
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]


class ConnectionShares:
    """Counts connections per address and per caller; 0 turns a cap off."""

    def __init__(self, per_address: int = 0, per_caller: int = 0) -> None:
        self.per_address = per_address
        self.per_caller = per_caller
        self._by_address: "Counter[str]" = Counter()
        self._by_caller: "Counter[Hashable]" = Counter()
        self._caller_of: Dict[Tuple[str, int], Hashable] = {}
        self._open: Set[Tuple[str, int]] = set()

    def opened(self, peer: Optional[Peer]) -> bool:
        """A connection from ``peer`` was accepted: False when its address already holds its share (refuse it)."""
        if not peer:
            return True
        key = _key(peer)
        if self.per_address and self._by_address[key[0]] >= self.per_address:
            return False
        self._by_address[key[0]] += 1
        self._open.add(key)
        return True

    def claim(self, peer: Optional[Peer], caller: Hashable) -> int:
        """A request of ``caller`` on the connection from ``peer``: 0 when it may go on, else the number of connections
        ``caller`` holds already (refuse it)."""
        if not peer or not self.per_caller:
            return 0
        key = _key(peer)
        held = self._caller_of.get(key)
        if held == caller:
            return 0
        if self._by_caller[caller] >= self.per_caller:
            return self._by_caller[caller]
        if held is not None:
            _less(self._by_caller, held)
        self._caller_of[key] = caller
        self._by_caller[caller] += 1
        return 0

    def closed(self, peer: Optional[Peer]) -> None:
        """The connection from ``peer`` ended: its share is free again."""
        if not peer:
            return
        key = _key(peer)
        if key in self._open:
            self._open.discard(key)
            _less(self._by_address, key[0])
        caller = self._caller_of.pop(key, None)
        if caller is not None:
            _less(self._by_caller, caller)

    def held(self) -> Tuple[int, int]:
        """(connections counted, callers holding some): for tests and logs."""
        return len(self._open), len(self._by_caller)
