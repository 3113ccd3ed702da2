"""The repository is self-contained: no file points a reader to notes that live outside it."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# built from pieces so that this file does not match itself
_DIR = "sha" + "red"
_NAMES = "|".join(("FA" + "CTS", "DE" + "SIGN", "ST" + "YLE", "PE" + "ERS"))
# ../<dir>, <dir>/<NOTE>, or a bare <NOTE>.md
OUTSIDE_NOTE = re.compile(rf"\.\./{_DIR}\b|\b{_DIR}/({_NAMES})\b|\b({_NAMES})\.md\b")


def _project_files() -> list[str]:
    """Tracked files and new files not ignored by .gitignore (what the next commit would hold)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [p for p in out.splitlines() if (ROOT / p).is_file()]


def test_no_file_refers_to_notes_outside_the_repository():
    files = _project_files()
    assert "README.md" in files and any(p.startswith("rlexp/") for p in files)  # the walk sees the project
    hits = []
    for path in files:
        text = (ROOT / path).read_bytes().decode("utf-8", errors="ignore")
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE_NOTE.search(line):
                hits.append(f"{path}:{n}: {line.strip()}")
    assert not hits, "state the fact itself instead of pointing outside the repository:\n" + "\n".join(hits)


def test_the_pattern_catches_each_kind_of_reference():
    for text in (f"see ../{_DIR}/notes", f"({_DIR}/{'FA'}CTS.md)", f"{_DIR}/{'DE'}SIGN.md", f"{_DIR}/{'ST'}YLE",
                 f"{_DIR}/{'PE'}ERS.md", f"a decaying lr, {'FA'}CTS.md"):
        assert OUTSIDE_NOTE.search(text), text
    for text in ("a shared 2-core machine", "Shared fixtures", "tests/shared_fixtures.py"):
        assert not OUTSIDE_NOTE.search(text), text


def test_the_readme_is_a_guide_whose_links_resolve():
    """About 250 lines of guide (≤ 300); the details live in docs/, and every relative link resolves."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines: move details to docs/"
    assert any(line.startswith("## Extending rlexp") for line in lines)
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to a missing {target}"


def test_no_source_file_is_over_about_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "rlexp").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 420}
    assert not long, f"split these files (a file does one thing, readable in one sitting): {long}"
