"""Every notebook's percent-format .py (the source of truth) has a paired .ipynb with the same cells,
so nbval (which runs the .ipynb files) tests what the .py says."""

from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def _cells(notebook) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in notebook.cells]


def test_there_are_notebooks():
    assert len(SOURCES) >= 1


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_paired_ipynb_has_the_same_cells(source):
    paired = source.with_suffix(".ipynb")
    assert paired.exists(), f"{paired.name} is missing: run `jupytext --to ipynb {source}` (or execute it)"
    assert _cells(jupytext.read(paired)) == _cells(jupytext.read(source)), (
        f"{paired.name} is out of date with {source.name}: re-execute it (python -m nrnlib reproduce --only "
        f"{source.stem[:2]}) or `jupytext --sync`")


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_has_a_parameters_cell(source):
    cells = jupytext.read(source).cells
    assert any("parameters" in c.metadata.get("tags", []) for c in cells), f"{source.name} has no parameters cell"
