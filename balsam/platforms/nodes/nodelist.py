"""Pure parsers for the ways schedulers name an allocation's nodes.

* Slurm host lists: ``nid[00010-00012,00020],login1``, ``rack[1-2]-n[01-02]`` (zero padding kept, several
  bracket groups expand as a product), as in ``SLURM_JOB_NODELIST``.
* Node files (``PBS_NODEFILE``, ``COBALT_NODEFILE``, ``LSB_DJOB_HOSTFILE``): one host per line (or
  comma/space separated), a host repeated once per slot; duplicates collapse, first-seen order kept.
* Cobalt's ``COBALT_PARTNAME``: numeric node ids and ranges, ``3841-3843,3845``.
* Grid Engine's ``PE_HOSTFILE``: ``host slots queue processors`` lines.
"""

from __future__ import annotations

import re
from typing import Iterable, List

from balsam.exceptions import LauncherError


def _split_top(expr: str) -> List[str]:
    """Split at commas that are not inside brackets."""
    parts: List[str] = []
    cur: List[str] = []
    depth = 0
    for ch in expr:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise LauncherError(f"cannot parse node list {expr!r}: unbalanced ']'")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise LauncherError(f"cannot parse node list {expr!r}: unbalanced '['")
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _expand_range_list(body: str, expr: str) -> List[str]:
    out: List[str] = []
    for item in body.split(","):
        item = item.strip()
        if not item:
            continue
        if "-" in item:
            lo, hi = item.split("-", 1)
            if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                raise LauncherError(f"cannot parse node list {expr!r}: bad range {item!r}")
            width = len(lo)
            out.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
        elif item.isdigit():
            out.append(item)
        else:
            raise LauncherError(f"cannot parse node list {expr!r}: bad index {item!r}")
    return out


def _expand_one(host: str, expr: str) -> List[str]:
    m = re.search(r"\[([^\[\]]*)\]", host)
    if not m:
        if "[" in host or "]" in host:
            raise LauncherError(f"cannot parse node list {expr!r}: stray bracket in {host!r}")
        return [host]
    prefix, suffix = host[: m.start()], host[m.end() :]
    out: List[str] = []
    for index in _expand_range_list(m.group(1), expr):
        out.extend(_expand_one(prefix + index + suffix, expr))
    return out


def expand_hostlist(expr: str) -> List[str]:
    """Expand a Slurm host list expression into host names, in order (pure)."""
    hosts: List[str] = []
    for part in _split_top(expr.strip()):
        hosts.extend(_expand_one(part, expr))
    return hosts


def unique(hosts: Iterable[str]) -> List[str]:
    """Drop repeats, keeping first-seen order."""
    seen: List[str] = []
    index = set()
    for h in hosts:
        if h and h not in index:
            index.add(h)
            seen.append(h)
    return seen


def parse_nodefile(text: str) -> List[str]:
    """Hosts of a node file: lines (or commas/spaces), repeats collapsed, '#' comments skipped (pure)."""
    hosts: List[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        hosts.extend(tok for tok in re.split(r"[,\s]+", line) if tok)
    return unique(hosts)


def parse_partname(partname: str, width: int = 5, prefix: str = "nid") -> List[str]:
    """Cobalt ``COBALT_PARTNAME`` ``3841-3843,3845`` -> ``nid03841``... (pure)."""
    ids = _expand_range_list(partname.replace(" ", ""), partname)
    return [f"{prefix}{int(i):0{width}d}" for i in ids]


def parse_pe_hostfile(text: str) -> List[str]:
    """Grid Engine ``PE_HOSTFILE``: the first column of each line (pure)."""
    return unique(line.split()[0] for line in text.splitlines() if line.strip())
