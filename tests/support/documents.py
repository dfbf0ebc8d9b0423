"""The project's documents (README.md, docs/*.md) and their fenced code blocks, for the tests that check them."""

from __future__ import annotations

import re

from fixtures import REPO

DOCUMENTS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]


def blocks(document: str, language: str) -> list[str]:
    """The bodies of the document's ```LANGUAGE blocks, in order."""
    return re.findall(rf"```{language}\n(.*?)```", (REPO / document).read_text(), re.S)
