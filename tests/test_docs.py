"""The manual builds (mkdocs build --strict: every page, link, anchor and API reference resolves), the README stays a
short front page whose Quickstart commands .ci/run can read, and the changelog names the package's version."""

import os
import re
import subprocess
import sys
from pathlib import Path

import camcli

ROOT = Path(__file__).resolve().parents[1]

PAGES = [  # every page in mkdocs.yml's nav, as the built site holds it
    "index.html",
    "install/index.html",
    "commands/index.html",
    "commands/train/index.html",
    "commands/predict/index.html",
    "commands/overlay/index.html",
    "commands/evaluate/index.html",
    "commands/compare/index.html",
    "commands/export/index.html",
    "ci/index.html",
    "commands/models/index.html",
    "methods/index.html",
    "localization/index.html",
    "speed/index.html",
    "backbones/index.html",
    "output/index.html",
    "reliability/index.html",
    "checkpoint/index.html",
    "api/index.html",
    "figures/index.html",
    "development/index.html",
]

# development history belongs in git log and CHANGELOG.md, not in the README or the manual
HISTORY = re.compile(r"\bRound |(?i:\bround (one|two|three|four)\b|hostile review|next round|this round|\(was )")


def test_the_manual_builds_in_strict_mode(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    missing = [page for page in PAGES if not (site / page).is_file()]
    assert not missing, missing
    api = (site / "api" / "index.html").read_text()
    for name in ("camcli.factory.load", "camcli.engine.Model.maps", "camcli.jobs.run_here", "camcli.errors.CamcliError"):
        assert f'id="{name}"' in api, name  # rendered from the docstrings by mkdocstrings


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md"))
    assert [p for p in pages if p not in nav] == []
    assert len(pages) == len(PAGES)


def test_the_readme_is_a_short_front_page():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 300
    assert not HISTORY.search(text), HISTORY.search(text)
    assert "../shared" not in text
    for kind in ("light", "tests"):  # .ci/run: the line after the fence after the marker is the command
        marker = lines.index(f"<!-- quickstart: {kind} -->")
        assert lines[marker + 1] == "```bash"
        assert lines[marker + 2].startswith("python3 -m venv ")
        assert lines[marker + 3] == "```"
    assert lines.index("<!-- quickstart: light -->") < 30  # the first command comes early
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text) + re.findall(r'src="([^"]+)"', text):
        if not re.match(r"[a-z]+:", target):
            assert (ROOT / target).exists(), target  # relative links point at files of the repository


def test_the_manual_holds_no_development_history():
    for page in (ROOT / "docs").rglob("*.md"):
        text = page.read_text()
        assert not HISTORY.search(text), (page.name, HISTORY.search(text))
        assert "../shared" not in text, page.name


def test_the_changelog_names_this_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## \[([^\]]+)\]", text, re.MULTILINE)
    assert versions[0] == camcli.__version__  # a new version gets its section
    assert re.search(rf"^## \[{re.escape(camcli.__version__)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", text, re.MULTILINE)
    assert "Unreleased" not in versions
    assert versions == sorted(versions, key=lambda v: tuple(map(int, v.split("."))), reverse=True)
