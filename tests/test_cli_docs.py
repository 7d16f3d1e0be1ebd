"""``balsam docs``: the README ships inside Balsam (the package and balsam.pyz) and reads offline, by section."""

from __future__ import annotations

from typing import Any

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


def _using_balsam_block() -> list:
    import shlex

    text = next(s for s in sections(readme_text()) if s.title == "Using Balsam").text
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line.split("  #", 1)[0]) for line in block.splitlines() if line.startswith("balsam ")]


def test_the_readmes_site_and_queue_commands_pass_the_preset_they_name(tmp_path: Any, monkeypatch: Any) -> None:
    """The README submitted 4 nodes to Polaris' debug queue (2 at most: 'queue debug allows at most 2 nodes') and
    its --dry-run line named no site, which outside a site with two registered is an error."""
    from balsam.api import BatchJob

    monkeypatch.chdir(tmp_path)
    lines = _using_balsam_block()
    home = str(tmp_path / "my-site")
    ok(*[arg.replace("~/my-site", home) for arg in next(line for line in lines if line[1:3] == ["site", "init"])[1:]])
    ok("site", "init", str(tmp_path / "other"), "-n", "other-site")
    submits = [line for line in lines if line[1:3] == ["queue", "submit"]]
    assert len(submits) == 2
    for line in submits:
        assert "--site" in line
        ok(*line[1:])
    assert BatchJob.objects.filter(site_name="my-site").count() == 1
