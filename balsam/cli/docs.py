"""``balsam docs``: read the documentation that ships inside Balsam (the README), offline, by section."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, List, Sequence

import click

from balsam.cli._common import CLIError, echo_table

if TYPE_CHECKING:
    from balsam.docs import Section

MAX_SHOWN = 4
"""A topic matching more sections than this (by their text) lists them instead of printing them all."""


def _show(text: str) -> None:
    if sys.stdout.isatty():
        click.echo_via_pager(text + "\n")
    else:
        click.echo(text)


@click.command("docs")
@click.argument("topic", nargs=-1)
@click.option("--all", "show_all", is_flag=True, help="Print the whole README.")
def docs(topic: List[str], show_all: bool) -> None:
    """Read Balsam's documentation offline: the list of sections, or the sections a TOPIC names.

    TOPIC is a section number from the list, or words of a section's title (case does not matter); words
    found only in the text list the sections that mention them. The same text as the project's README, shipped
    inside the package and balsam.pyz.

    \b
    Examples:
      balsam docs                     (the list of sections)
      balsam docs relay               (the sections about the relay)
      balsam docs first five minutes
      balsam docs 12
      balsam docs --all | less
    """
    from balsam.docs import find_sections, readme_text, sections

    text = readme_text()
    if show_all:
        _show(text)
        return
    parts = sections(text)
    words = " ".join(topic)
    if not words:
        echo_table(["#", "Section"], [[s.number, ("  " * (s.level - 2)) + s.title if s.level > 1 else s.title] for s in parts])
        click.echo("\nRead one with 'balsam docs NUMBER' or 'balsam docs WORDS' (words of its title); everything: 'balsam docs --all'.")
        return
    found = find_sections(parts, words)
    if not found:
        raise CLIError(_no_section(words, parts), 2)
    in_titles = any(all(w in s.title.lower() for w in words.lower().split()) for s in found) or words.strip().isdigit()
    if not in_titles and len(found) > MAX_SHOWN:
        click.echo(f"No section title says {words!r}; {len(found)} sections mention it:")
        echo_table(["#", "Section"], [[s.number, s.title] for s in found])
        click.echo("\nRead one with 'balsam docs NUMBER'.")
        return
    _show("\n\n".join(s.text for s in found))


def _no_section(words: str, parts: Sequence["Section"]) -> str:
    from balsam.cli import did_you_mean

    if words.strip().isdigit():
        return f"no section {words.strip()} (sections are numbered 0 to {len(parts) - 1}; 'balsam docs' lists them)"
    title_words = sorted({w.strip(".,:()`'\"").lower() for s in parts for w in s.title.split() if len(w) > 2})
    hint = did_you_mean(words.split()[-1], title_words)
    return f"nothing in the documentation mentions {words!r}{hint}; 'balsam docs' lists the sections"
