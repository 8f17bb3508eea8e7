"""The README's architecture table names every module of the package, one line each, and only files that exist."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "emoadapt"


def test_readme_architecture_matches_the_tree():
    text = (ROOT / "README.md").read_text()
    table = text.split("### Architecture", 1)[1].split("\n\n", 2)[1].splitlines()[2:]
    assert table and all(line.startswith("| `") and line.count("|") == 3 for line in table)  # one line each
    named = {name for line in table for name in re.findall(r"`([a-z_0-9]+(?:\.py|/))`", line.split("|")[1])}
    actual = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    actual |= {p.name + "/" for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert named == actual, f"missing from README: {sorted(actual - named)}; not in the tree: {sorted(named - actual)}"
    for line in table:  # files a package's row names are in that package
        first = re.findall(r"`([a-z_0-9]+)/`", line.split("|")[1])
        for name in re.findall(r"`([a-z_0-9]+\.py|folds/)`", line.split("|")[2]) if first else []:
            assert (PACKAGE / first[0] / name.rstrip("/")).exists(), f"{first[0]}/{name} named in README does not exist"
