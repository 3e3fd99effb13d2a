"""The README is a front door and the rest is a MkDocs site that builds strictly."""
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_the_docs_site_builds_strictly(tmp_path):
    """A broken link or anchor, or a page that is not in the nav, fails the build."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    proc = subprocess.run([str(mkdocs), "build", "--strict", "-d", str(tmp_path / "site")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "performance" / "index.html").exists()


def test_the_readme_is_a_front_door():
    text = (REPO / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 250
    commands = [line.split("#")[0].strip() for line in lines[:6] if line.startswith("make ")]
    assert commands == ["make demo", "make test"]
    for heading in ("## Four ways to run it", "## Results", "## Layout", "## Documentation"):
        assert heading in text
    # every relative link of the README names a file of the repository, and an anchor its page has
    for target in re.findall(r"\]\(([^)#]+)(?:#([^)]+))?\)", text):
        path, anchor = target
        if path.startswith("http"):
            continue
        assert (REPO / path).exists(), path
        if anchor:
            headings = [re.sub(r"[^\w\- ]", "", h.lower()).strip().replace(" ", "-")
                        for h in re.findall(r"^#+ (.+)$", (REPO / path).read_text(), re.M)]
            assert anchor in headings, (path, anchor)


def test_the_layout_map_names_paths_that_exist():
    text = (REPO / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```")[1]
    for line in block.splitlines():
        first = line.split()[0] if line.strip() and not line.startswith(" ") else None
        if first:
            assert (REPO / first).exists(), first


def test_nothing_points_outside_the_repository():
    """Users of the project do not have the developers' ../shared."""
    offenders = []
    for path in [*REPO.glob("facealign/**/*.py"), *REPO.glob("launcher/*.py"), *REPO.glob("docs/*.md"),
                 *REPO.glob("docker/*"), *REPO.glob("bench/*.py"), REPO / "README.md", REPO / "CHANGELOG.md"]:
        if "shared/reference" in path.read_text(errors="replace"):
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders


def test_the_changelog_keeps_a_changelog():
    text = (REPO / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog") and "## [Unreleased]" in text
    assert re.search(r"^## \[\d+\.\d+\.\d+\] - \d{4}-\d{2}-\d{2}$", text, re.M)
