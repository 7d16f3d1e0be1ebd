"""``balsam docs``: the README ships inside Balsam (the package and balsam.pyz) and reads offline, by section."""

from __future__ import annotations

from balsam.docs import find_sections, readme_text, sections
from tests.cli_helpers import ROOT, fails, ok


def test_the_shipped_docs_are_the_readme() -> None:
    assert readme_text() == (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_list_of_sections_and_how_to_read_one() -> None:
    out = ok("docs").stdout
    assert "First five minutes" in out and "One file for login nodes" in out and "Compatibility with Balsam 0.7" in out
    assert "balsam docs NUMBER" in out
    assert "Balsam 0.7" in ok("docs").stdout


def test_a_topic_prints_its_section_and_nothing_else() -> None:
    out = ok("docs", "first", "five", "minutes").stdout
    assert out.startswith("## First five minutes") and "scripts/demo" in out
    assert "## Benchmarks" not in out
    number = next(s.number for s in sections(readme_text()) if s.title == "The web dashboard")
    assert ok("docs", str(number)).stdout.startswith("### The web dashboard")
    assert "balsam relay user add alice" in ok("docs", "RELAY").stdout


def test_a_word_only_in_the_text_lists_the_sections_that_mention_it() -> None:
    parts = sections(readme_text())
    mentions = find_sections(parts, "settings.yml")
    assert len(mentions) > 4
    out = ok("docs", "settings.yml").stdout
    assert "sections mention it" in out and all(s.title in out for s in mentions)


def test_an_unknown_topic_is_one_line_with_a_suggestion() -> None:
    err = fails("docs", "dashbord", code=2)
    assert "nothing in the documentation mentions 'dashbord'" in err and "Did you mean 'dashboard'" in err
    assert "no section 999" in fails("docs", "999", code=2)


def test_headings_inside_code_blocks_are_not_sections() -> None:
    text = "# T\nintro\n## A\n```bash\n## not a heading\n```\n### B\nbody\n"
    assert [(s.title, s.level) for s in sections(text)] == [("Overview", 1), ("A", 2), ("B", 3)]
    assert "## not a heading" in sections(text)[1].text
