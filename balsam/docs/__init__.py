"""Balsam's documentation, shipped inside the package and the zipapp: the README, read by section.

``README.md`` here is the repository's README (a link in the source tree, a copy in wheels and in
``balsam.pyz``), so a login node with nothing but ``balsam.pyz`` can read it: ``balsam docs`` lists its
sections and ``balsam docs TOPIC`` prints the ones whose title matches. Loaded with ``importlib.resources``,
so it works from a zip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import List

__all__ = ["Section", "find_sections", "readme_text", "sections"]

_HEADING = re.compile(r"^(#{1,4}) +(.+?) *$")


@dataclass(frozen=True)
class Section:
    """One headed part of the README: its number in the list, heading level, title and text (heading included)."""

    number: int
    level: int
    title: str
    text: str


def readme_text() -> str:
    """The README shipped with this copy of Balsam."""
    return (resources.files(__name__) / "README.md").read_text(encoding="utf-8")


def sections(text: str) -> List[Section]:
    """The README's sections (``##`` and ``###`` headings; the ``#`` title's text is section 0's), in order.
    A section's text runs to the next heading of any level, so each is short enough to read at once; fenced
    code blocks are not scanned for headings (a ``# comment`` in a shell example is not one)."""
    out: List[Section] = []
    title, level = "Overview", 1
    lines: List[str] = []
    fenced = False

    def close() -> None:
        body = "\n".join(lines).strip("\n")
        if body.strip():
            out.append(Section(len(out), level, title, body))

    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else _HEADING.match(line)
        if m is not None and len(m.group(1)) >= 2:
            close()
            title, level, lines = m.group(2), len(m.group(1)), [line]
            continue
        lines.append(line)
    close()
    return out


def find_sections(all_sections: List[Section], topic: str) -> List[Section]:
    """The sections a topic names: a section number, else every section whose title contains each of the
    topic's words (case-insensitive), else those whose text does."""
    topic = topic.strip()
    if topic.isdigit():
        return [s for s in all_sections if s.number == int(topic)]
    words = topic.lower().split()
    if not words:
        return []
    by_title = [s for s in all_sections if all(w in s.title.lower() for w in words)]
    if by_title:
        return by_title
    return [s for s in all_sections if all(w in s.text.lower() for w in words)]
