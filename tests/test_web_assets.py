"""The built dashboard shipped inside the package: complete, self-contained (nothing from the network), within
its size budget, split per view, and built from exactly pinned sources."""

from __future__ import annotations

import gzip
import json
import re
from importlib import resources
from pathlib import Path
from typing import Dict

REPO = Path(__file__).resolve().parents[1]
VIEWS = ("SitesView", "AppsView", "BatchJobsView", "BatchJobView", "JobsView", "JobView", "NewJobView", "TransfersView", "HistoryView",
         "DagsView")


def _files() -> Dict[str, bytes]:
    web = resources.files("balsam") / "web"
    out = {"index.html": (web / "index.html").read_bytes()}
    for entry in (web / "assets").iterdir():
        out[f"assets/{entry.name}"] = entry.read_bytes()
    return out


def test_index_and_every_asset_it_needs_are_in_the_package() -> None:
    files = _files()
    index = files["index.html"].decode()
    refs = re.findall(r'(?:src|href)="/(assets/[^"]+)"', index)
    assert any(r.endswith(".js") for r in refs) and any(r.endswith(".css") for r in refs)
    for ref in refs:
        assert ref in files, ref
    for name, data in files.items():
        if name.endswith(".js"):
            for chunk in re.findall(r'"\./([\w.-]+\.(?:js|css))"', data.decode()):
                assert f"assets/{chunk}" in files, f"{name} loads {chunk}, which is missing"


def test_nothing_comes_from_the_network() -> None:
    files = _files()
    assert not re.search(r'(?:src|href)="(?:https?:)?//', files["index.html"].decode())
    for name, data in files.items():
        text = data.decode(errors="replace")
        if name.endswith(".css"):
            assert not re.search(r"url\(\s*['\"]?(?:https?:)?//", text), name
            assert "@import" not in text, name
        for host in ("fonts.googleapis", "fonts.gstatic", "cdn.jsdelivr", "unpkg.com", "cdnjs"):
            assert host not in text, f"{name} mentions {host}"
    assert not any(n.endswith((".woff", ".woff2", ".ttf", ".eot")) for n in files)  # icons are inline SVG paths


def test_under_400_kb_gzipped_and_each_view_loaded_on_demand() -> None:
    files = _files()
    total = sum(len(gzip.compress(d, 9)) for d in files.values())
    assert total < 400 * 1024, f"{total / 1024:.0f} KiB gzipped"
    names = [n.split("/", 1)[1] for n in files if n.startswith("assets/") and n.endswith(".js")]
    for view in VIEWS:
        assert any(n.startswith(f"{view}-") for n in names), f"{view} is not its own chunk"
    entry = re.search(r'src="/assets/([^"]+\.js)"', files["index.html"].decode())
    assert entry is not None
    assert "HistoryView" not in entry.group(1)


def test_sources_pin_exact_versions_with_a_lockfile() -> None:
    package = json.loads((REPO / "web" / "package.json").read_text())
    for section in ("dependencies", "devDependencies"):
        for name, spec in package[section].items():
            assert re.fullmatch(r"\d+\.\d+\.\d+", spec), f"{name}: {spec} is not an exact version"
    lock = json.loads((REPO / "web" / "package-lock.json").read_text())
    assert lock["packages"][""]["dependencies"] == package["dependencies"]
    assert lock["packages"]["node_modules/vite"]["version"] == package["devDependencies"]["vite"]
