"""Facts kept in one place: the docs quote the code's tables, and every page the README links exists."""
import re
from pathlib import Path

from assignments.s9_variants import variants_markdown

REPO = Path(__file__).resolve().parents[1]


def test_the_s9_variants_table_in_the_docs_is_the_code_s():
    table = variants_markdown().split("\n\n")[0]
    assert table in (REPO / "docs" / "s9-postmortem.md").read_text()


def test_every_local_link_of_the_readme_and_the_docs_resolves():
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: {target}"
