"""Every public name that docs/ARCHITECTURE.md lists is importable from the file or module it names; the top-level
files re-export the package's names (the same objects) and nothing in the repository points outside it."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def _public_names() -> list[tuple[str, list[str]]]:
    """Rows of the table under "## Public names": (file or module, [names])."""
    section = DOC.read_text().split("## Public names", 1)[1]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            rows.append((cells[0].strip("`"), re.findall(r"`([^`]+)`", cells[1])))
    return rows


ROWS = _public_names()


def test_the_table_covers_every_top_level_file():
    files = {name for name, _ in ROWS if name.endswith(".py")}
    assert files == {path.name for path in ROOT.glob("*.py")}


@pytest.mark.parametrize("where, names", ROWS, ids=[where for where, _ in ROWS])
def test_every_listed_name_is_importable(where, names, monkeypatch):
    if where.endswith(".py"):
        monkeypatch.syspath_prepend(str(ROOT))  # the top-level files work from the repository root
        module = importlib.import_module(where[:-3])
        assert Path(module.__file__).parent == ROOT
    else:
        module = importlib.import_module(where)
    missing = [name for name in names if not hasattr(module, name)]
    assert not missing, f"{where} lacks {missing}"
    assert names, where


def test_top_level_files_are_thin_fronts_of_the_package(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import datasets
    import regularizers

    from hypermorph_spatially_adaptive.core import regularizers as core_regularizers
    from hypermorph_spatially_adaptive.data import registry

    assert regularizers.elastic_energy is core_regularizers.elastic_energy
    assert datasets.get_dataset is registry.get_dataset
    for path in ROOT.glob("*.py"):
        assert len(path.read_text().splitlines()) < 80, f"{path.name} is more than a front"


def test_nothing_in_the_repository_points_outside_it():
    pattern = re.compile(r"\.\./shared|the contract|\bissue[ -]?\d|#\d+\b", re.IGNORECASE)
    folders = ("hypermorph_spatially_adaptive", "tests", "benchmarks", "docs")
    files = [p for folder in folders for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".json")]
    files += [p for p in ROOT.iterdir() if p.suffix in (".py", ".md", ".toml", ".yml") or p.name == "Makefile"]
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line) and p.name != Path(__file__).name]
    assert not hits, hits
