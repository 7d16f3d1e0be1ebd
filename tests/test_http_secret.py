"""The site's API secret: only a missing file makes a new one (defect 6): a read error must never replace the
secret running remote launchers hold."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from balsam.exceptions import ServiceError
from balsam.http import auth


def _flaky_reads(monkeypatch: pytest.MonkeyPatch, path: Path, failures: int) -> None:
    real = Path.read_bytes
    left = {"n": failures}

    def read_bytes(self: Path) -> bytes:
        if self == path and left["n"] > 0:
            left["n"] -= 1
            raise OSError(errno.EIO, "Input/output error (NFS)")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)


def test_a_transient_read_error_keeps_the_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "api.secret"
    first = auth.ensure_secret(path)[0]
    assert path.stat().st_mode & 0o777 == 0o600
    _flaky_reads(monkeypatch, path, 1)
    assert auth.ensure_secret(path)[0] == first
    assert path.read_bytes() == first


def test_a_lasting_read_error_is_an_error_not_a_new_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "api.secret"
    first = auth.ensure_secret(path)[0]
    _flaky_reads(monkeypatch, path, 100)
    with pytest.raises(ServiceError, match="cannot read the site's API secret"):
        auth.ensure_secret(path)[0]
    monkeypatch.undo()
    assert path.read_bytes() == first


def test_a_secret_others_can_read_is_refused_not_replaced(tmp_path: Path, *_: Any) -> None:
    path = tmp_path / "api.secret"
    first = auth.ensure_secret(path)[0]
    path.chmod(0o644)
    with pytest.raises(ServiceError, match="chmod 600"):
        auth.ensure_secret(path)[0]
    assert path.read_bytes() == first
    path.unlink()
    assert auth.ensure_secret(path)[0] != first, "a missing file is the one case that makes a new secret"
