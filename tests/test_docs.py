"""The front door: README and docs/ pages link only inside the repository, every link
resolves, and the two pages people read first stay short."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold commands, not links
    return LINK.findall(text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_stays_in_the_repository_and_resolves(page):
    for target in _links(page):
        path = target.split("#", 1)[0]
        assert not re.match(r"[a-z]+://", target), f"{page.name}: {target} leaves the repository"
        if not path:
            continue
        resolved = (page.parent / path).resolve()
        assert resolved.is_relative_to(ROOT), f"{page.name}: {target} points outside the repository"
        assert resolved.exists(), f"{page.name}: {target} does not exist"


@pytest.mark.parametrize("name, limit", [("README.md", 200), ("docs/results.md", 200)])
def test_the_front_pages_stay_short(name, limit):
    lines = (ROOT / name).read_text().splitlines()
    assert len(lines) <= limit, f"{name}: {len(lines)} lines, the limit is {limit}"


def test_readme_names_the_two_commands_and_shows_a_picture():
    text = (ROOT / "README.md").read_text()
    assert "make run" in text and "make test" in text
    pictures = [t for t in _links(ROOT / "README.md") if t.endswith(".png")]
    assert pictures and all((ROOT / t).is_file() for t in pictures)
