"""docs/ARCHITECTURE.md names every package and module of src/emoadapt, one line each, and nothing that is not there;
the README links to it."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "emoadapt"


def _table() -> list[str]:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("## Packages and modules", 1)[1]
    return [line for line in section.splitlines() if line.startswith("| `")]


def test_architecture_table_matches_the_tree():
    table = _table()
    assert table and all(line.count("|") == 3 for line in table)  # one line each
    named = [re.fullmatch(r"`([a-z_0-9/]+(?:\.py|/))`", line.split("|")[1].strip()).group(1) for line in table]
    assert len(named) == len(set(named)), "a module is named twice"
    actual = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
              if p.name not in ("__init__.py", "__main__.py")}
    actual |= {str(p.relative_to(PACKAGE)) + "/" for p in PACKAGE.rglob("*") if p.is_dir()
               and (p / "__init__.py").is_file()}
    # a package that is one module (its __init__.py) is named as the package
    assert set(named) == actual, (f"missing from docs/ARCHITECTURE.md: {sorted(actual - set(named))}; "
                                  f"not in the tree: {sorted(set(named) - actual)}")


def test_at_most_eight_modules_directly_in_the_package():
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= 8, top


def test_readme_links_the_docs():
    readme = (ROOT / "README.md").read_text()
    for doc in ("docs/CLI.md", "docs/ARCHITECTURE.md", "docs/RESULTS.md", "docs/METHOD.md", "docs/RELIABILITY.md"):
        assert f"({doc})" in readme, doc
        assert (ROOT / doc).is_file(), doc
