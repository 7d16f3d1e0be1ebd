"""``rsync``: batches of files to and from ``[user@]host:path`` over ssh (or between local paths).

A batch whose items all come from one place (one host, or this host) into local paths is *pulled* with one
rsync: the sources go in a ``--files-from`` list, arrive under the task's staging folder, and are moved into
their destinations when the task is polled after it ended. A batch whose items all go from local paths to
one host is *pushed* with one rsync: the sources are hard-linked (copied where a link is impossible) into a
staging tree laid out like the destinations below their common folder, which rsync sends there. One ssh
connection carries the whole batch, which is what makes batching pay (see bench/bench_transfers.py). Other
mixes fall back to one rsync per item.

rsync runs with ``--partial-dir``, and when the connection drops (exit 10, 12, 30, 35 or ssh's 255) the task
tries again, up to ``attempts`` times with a doubling pause, resuming partial files. A source that does not
exist fails its own item with rsync's message; the others arrive.

Options (the composition root fills them from ``transfers`` in settings.yml):
  rsh       remote shell for ``-e`` (e.g. ``ssh -i ~/.ssh/key -o BatchMode=yes``); empty: rsync's own choice,
            which honours ``RSYNC_RSH`` in the environment, else plain ssh with the user's keys and ssh config
  flags     extra rsync flags, space-separated
  mkpath    ``true`` to pass ``--mkpath`` in the one-rsync-per-item fallback (rsync >= 3.2.3)
  attempts  tries per task when the connection drops (default 3)
  timeout   rsync's ``--timeout`` in seconds: a stalled connection counts as dropped (default 300)
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from balsam.exceptions import ConfigError
from balsam.platforms import detached
from balsam.platforms.transfer.base import (
    ItemFailure,
    ScriptTransfer,
    TransferItem,
    TransferState,
    TransferStatus,
    all_failed,
    is_remote,
    parse_item_failures,
    render_item_script,
    split_remote,
    tail,
)

TRANSIENT_EXIT = (10, 12, 30, 35, 255)
"""rsync exit codes of a lost connection (socket I/O, protocol stream, timeouts) and ssh's own failure."""
PARTIAL_DIR = ".balsam-partial"
_TRANSFERRED = re.compile(r"Total transferred file size: ([\d,.]+) bytes")


def render_rsync_steps(
    items: Sequence[TransferItem], rsh: str = "", flags: Sequence[str] = (), mkpath: bool = False
) -> List[List[str]]:
    """One ``rsync -a`` per item, preceded by ``mkdir -p`` for a local destination (pure; the fallback for
    batches that mix hosts or directions).

    A recursive item copies the source directory's contents into the destination directory (both get a
    trailing slash, rsync's "contents of" form).
    """
    base = ["rsync", "-a", *flags]
    if rsh:
        base += ["-e", rsh]
    if mkpath:
        base.append("--mkpath")
    steps: List[List[str]] = []
    for item in items:
        src, dest = item.source, item.destination
        if item.recursive:
            src, dest = src.rstrip("/") + "/", dest.rstrip("/") + "/"
        if not is_remote(item.destination):
            folder = item.destination if item.recursive else (os.path.dirname(item.destination.rstrip("/")) or ".")
            steps.append(["mkdir", "-p", folder])
        steps.append([*base, src, dest])
    return steps


def render_retry_script(argv: Sequence[str], attempts: int, first_pause_s: float = 1.0) -> str:
    """A bash script that runs one rsync, again after a lost connection, up to ``attempts`` times (pure)."""
    cmd = " ".join(shlex.quote(str(a)) for a in argv)
    codes = "|".join(str(c) for c in TRANSIENT_EXIT)
    return "\n".join([
        "#!/bin/bash",
        "# Balsam transfer task (one rsync for the batch); written by balsam.platforms.transfer.rsync",
        f"attempt=1; pause={first_pause_s:g}",
        "while :; do",
        f"  {cmd} && exit 0",
        "  rc=$?",
        f"  case $rc in {codes}) ;; *) exit $rc ;; esac",
        f"  if [ $attempt -ge {int(attempts)} ]; then echo \"balsam-transfer: rsync lost its connection $attempt times (exit $rc)\" >&2; exit $rc; fi",
        '  echo "balsam-transfer: attempt $attempt: rsync exit $rc (connection lost); resuming in ${pause}s" >&2',
        '  sleep "$pause"; pause=$(awk "BEGIN{print $pause*2}"); attempt=$((attempt+1))',
        "done",
        "",
    ])


def plan_batch(items: Sequence[TransferItem]) -> Tuple[str, str]:
    """How a batch can go as one rsync: ("pull", host) when every source is on one host (or all local) and
    every destination is local; ("push", host) when every source is local and every destination is on one
    host; ("each", "") otherwise (pure)."""
    src_hosts = {split_remote(i.source)[0] for i in items}
    dst_hosts = {split_remote(i.destination)[0] for i in items}
    if dst_hosts == {""} and len(src_hosts) == 1:
        return "pull", src_hosts.pop()
    if src_hosts == {""} and len(dst_hosts) == 1:
        return "push", dst_hosts.pop()
    return "each", ""


def error_lines(output: str) -> List[str]:
    """rsync's own error lines (``rsync: ...``, ``rsync error: ...``) and ssh's, from a task's output."""
    keep = ("rsync:", "rsync error:", "ssh:", "ssh_exchange", "Connection ", "Permission denied", "Host key", "kex_")
    return [line.strip() for line in output.splitlines() if line.strip().startswith(keep) or "balsam-transfer:" in line]


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy) every file of ``src`` into ``dst``, keeping the layout and symlinks."""
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            _link_or_copy(Path(root) / name, dst / rel / name)


def _place(staged: Path, dest: Path, recursive: bool) -> None:
    """Put a staged file or directory at its destination by hard links (a copy across filesystems), so
    items that overlap (a file and the folder holding it) each get theirs; the staging folder goes after."""
    if staged.is_dir() and not staged.is_symlink():
        dest.mkdir(parents=True, exist_ok=True)
        _link_tree(staged, dest)
    else:  # a file (also one named by a recursive slot) goes to the destination path itself
        _link_or_copy(staged, dest)


def transferred_bytes(output: str) -> Optional[int]:
    """The last ``Total transferred file size`` of rsync's --stats in ``output`` (pure)."""
    found = _TRANSFERRED.findall(output)
    if not found:
        return None
    return int(re.sub(r"[,.]", "", found[-1]))


class RsyncTransfer(ScriptTransfer):
    """Copies batches with one rsync (over ssh for a remote host)."""

    name = "rsync"
    options_help = {
        "rsh": "remote shell command for rsync -e (default: RSYNC_RSH from the environment, else ssh)",
        "flags": "extra rsync flags, space-separated",
        "mkpath": "true to pass --mkpath in the one-rsync-per-item fallback (rsync >= 3.2.3)",
        "attempts": "tries per task when the connection drops (default 3)",
        "timeout": "rsync --timeout in seconds (default 300)",
    }

    def _int_option(self, key: str, default: int) -> int:
        try:
            value = int(self.options.get(key, default))
        except ValueError:
            raise ConfigError(f"transfer rsync: option {key} must be a whole number, got {self.options[key]!r}") from None
        if value < 1:
            raise ConfigError(f"transfer rsync: option {key} must be at least 1, got {value}")
        return value

    def _base_argv(self) -> List[str]:
        argv = ["rsync", "--partial-dir=" + PARTIAL_DIR, f"--timeout={self._int_option('timeout', 300)}", "--stats"]
        argv += shlex.split(self.options.get("flags", ""))
        if self.options.get("rsh"):
            argv += ["-e", self.options["rsh"]]
        return argv

    def render_steps(self, items: Sequence[TransferItem]) -> List[List[str]]:
        """The one-rsync-per-item fallback (see :func:`render_rsync_steps`)."""
        return render_rsync_steps(items, rsh=self.options.get("rsh", ""), flags=shlex.split(self.options.get("flags", "")),
                                  mkpath=self.option_flag("mkpath"))

    def prepare(self, items: Sequence[TransferItem], task_dir: Path) -> str:
        """Write the file list (and for a push, the staging tree); return the task's script."""
        mode, host = plan_batch(items)
        (task_dir / "mode").write_text(mode)
        attempts = self._int_option("attempts", 3)
        if mode == "each":
            return render_item_script([self.render_steps([item]) for item in items])
        stage = task_dir / "stage"
        stage.mkdir()
        remote = f"{host}:" if host else ""
        if mode == "pull":
            names = sorted({split_remote(i.source)[1].lstrip("/") for i in items})
            (task_dir / "files").write_bytes(b"".join(n.encode() + b"\0" for n in names))
            argv = [*self._base_argv(), "-a", "-r", "--from0", f"--files-from={task_dir / 'files'}", f"{remote}/", f"{stage}/"]
            return render_retry_script(argv, attempts)
        # push: lay the sources out like the destinations below their common folder
        dests = [split_remote(i.destination)[1] for i in items]
        folders = [d.rstrip("/") if i.recursive else (os.path.dirname(d.rstrip("/")) or "/") for i, d in zip(items, dests)]
        common = os.path.commonpath(folders) if all(f.startswith("/") for f in folders) else "."
        names = []
        missing = []
        for index, (item, dest) in enumerate(zip(items, dests)):
            rel = os.path.relpath(dest.rstrip("/"), common)
            src = Path(item.source)
            if not src.exists():
                missing.append(f"{index}\t{item.source}")
                continue
            if item.recursive or src.is_dir():
                _link_tree(src, stage / rel)
            else:
                _link_or_copy(src, stage / rel)
            names.append(rel)
        (task_dir / "missing").write_text("\n".join(missing))
        (task_dir / "common").write_text(common)
        if not names:
            return "#!/bin/bash\nexit 23\n"
        (task_dir / "files").write_bytes(b"".join(n.encode() + b"\0" for n in sorted(set(names))))
        argv = [*self._base_argv(), "-rlt", "--omit-dir-times", "--mkpath", "--from0", f"--files-from={task_dir / 'files'}",
                f"{stage}/", f"{remote}{common.rstrip('/')}/"]
        return render_retry_script(argv, attempts)

    def finish(self, task_id: str, items: Sequence[TransferItem], task_dir: Path, rec: detached.ProcessRecord) -> TransferStatus:
        """Pull: move staged files into place, item by item. Push: read which items rsync could not send."""
        try:
            mode = (task_dir / "mode").read_text().strip()
        except OSError:
            mode = "each"
        output = tail(task_dir / "output", 400)
        rc = rec.returncode
        seconds = (rec.end - rec.start) if rec.end is not None and rec.start is not None else None
        nbytes = transferred_bytes(output)
        errors = error_lines(output)
        transient = rc in TRANSIENT_EXIT
        ssh_said = list(dict.fromkeys(e for e in errors if not e.startswith(("rsync", "balsam-transfer"))))[-2:]
        lost = f"rsync exit {rc}: " + (" | ".join(ssh_said + errors[-2:]) or tail(task_dir / "output", 3))
        failed: Dict[int, ItemFailure] = {}
        if rec.cancelled is not None:
            return all_failed(task_id, len(items), "the transfer was cancelled", returncode=rc)
        if mode == "each":
            failed = {i: ItemFailure(m) for i, m in parse_item_failures(output).items()}
            if rc != 0 and not failed:
                return all_failed(task_id, len(items), lost, transient, rc)
        elif mode == "pull":
            stage = task_dir / "stage"
            for index, item in enumerate(items):
                rel = split_remote(item.source)[1].lstrip("/")
                staged = stage / rel
                if not (staged.exists() or staged.is_symlink()):
                    failed[index] = self._why(rel, errors, lost, rc, transient)
                    continue
                try:
                    _place(staged, Path(item.destination), item.recursive)
                except OSError as exc:
                    failed[index] = ItemFailure(f"cannot move the file into place at {item.destination}: {exc.strerror or exc}")
            shutil.rmtree(stage, ignore_errors=True)
        else:  # push
            try:
                missing = (task_dir / "missing").read_text().splitlines()
                common = (task_dir / "common").read_text()
            except OSError:
                missing, common = [], "/"
            for line in missing:
                index_text, _, path = line.partition("\t")
                failed[int(index_text)] = ItemFailure(f"local file missing: {path}")
            if rc != 0:
                rels = {i: os.path.relpath(split_remote(it.destination)[1].rstrip("/"), common) for i, it in enumerate(items)}
                named = {i: [e for e in errors if rel in e] for i, rel in rels.items() if i not in failed}
                general = not any(named.values())  # nothing names an item: the whole rsync failed
                for index, mentioned in named.items():
                    if mentioned:
                        failed[index] = ItemFailure(mentioned[-1])
                    elif general:
                        failed[index] = ItemFailure(lost, transient)
            shutil.rmtree(task_dir / "stage", ignore_errors=True)
        if failed and len(failed) == len(items) and rc not in (0, 23, 24):
            status = TransferStatus(task_id, TransferState.ERROR, lost, rc, failed, nbytes, seconds)
        else:
            status = TransferStatus(task_id, TransferState.DONE, "", rc, failed, nbytes, seconds)
        return status

    @staticmethod
    def _why(rel: str, errors: Sequence[str], lost: str, rc: Optional[int], transient: bool) -> ItemFailure:
        mentioned = [e for e in errors if "/" + rel in e or rel in e]
        if mentioned:
            return ItemFailure(mentioned[-1])
        if rc == 0:
            return ItemFailure(f"rsync reported success but /{rel} did not arrive")
        return ItemFailure(lost, transient)
