"""The README stays short and the manual in docs/ stays whole: relative links resolve (files and
#anchors), every page is in the index, and the two commands are what CI runs. No Spark."""

import re
from pathlib import Path

from tests.helpers import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
DOCS = PROJECT_ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _links(page: Path) -> list[str]:
    text = _FENCE.sub("", page.read_text())
    return [target for target in _LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]


def _anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    text = _FENCE.sub("", page.read_text())
    ids = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.MULTILINE):
        ids.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return ids


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in _links(page):
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(PROJECT_ROOT)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{page.relative_to(PROJECT_ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_link_check_sees_links_and_anchors():
    assert "docs/operating.md" in _links(README)
    assert "maintenance-and-verification" in _anchors(DOCS / "operating.md")
    assert "tables--the-sql-contract" in _anchors(DOCS / "consuming.md")


def test_the_readme_is_short_and_names_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    commands = [line.split("#")[0].strip() for line in text.splitlines()]
    assert "make demo" in commands and "make test" in commands
    assert "make test" in (PROJECT_ROOT / ".ci" / "run").read_text().splitlines()


def test_every_manual_page_is_in_the_index():
    index = _links(DOCS / "README.md")
    pages = {p.name for p in DOCS.glob("*.md")} - {"README.md"}
    assert pages <= set(index), f"docs/README.md does not list {sorted(pages - set(index))}"
    readme_links = _links(README)
    assert all(f"docs/{name}" in readme_links for name in pages), "the README's 'Where to read on' misses a page"
