"""Every notebook's percent-format .py (the source of truth) has a paired .ipynb with the same cells,
so nbval (which runs the .ipynb files) tests what the .py says."""

import os
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


def test_smoke_reproduce_never_writes_the_committed_notebooks_or_figures(tmp_path, monkeypatch):
    """``reproduce`` under smoke sends executed notebooks and figures to the smoke folder; under
    standard the notebooks are written in place."""
    import nrnlib.__main__ as cli
    import nrnlib.gallery

    written = []
    monkeypatch.setattr(cli, "execute_notebook", lambda source, output=None: written.append(output) or 0.0)
    monkeypatch.setattr(nrnlib.gallery, "build_gallery", lambda: tmp_path / "index.html")
    monkeypatch.setenv("NRN_SMOKE_DIR", str(tmp_path / "smoke"))
    monkeypatch.setenv("NRN_FIGURES", "")
    monkeypatch.setenv("NRN_PROFILE", "smoke")
    cli.reproduce("smoke", ["00"])
    assert written == [tmp_path / "smoke" / "notebooks" / "00_model_and_tasks.ipynb"]
    assert os.environ["NRN_FIGURES"] == str(tmp_path / "smoke" / "figures")
    monkeypatch.setenv("NRN_FIGURES", str(tmp_path / "standard-figures"))  # elsewhere: no scorecard rewrite
    written.clear()
    cli.reproduce("standard", ["00"])
    assert written == [None]


def _executed(source):
    import json

    paired = json.loads(source.with_suffix(".ipynb").read_text())
    outputs = [o for c in paired["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    if not outputs:
        pytest.skip(f"{source.stem} is committed without outputs (its run is pending)")
    return outputs


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_committed_outputs_have_no_progress_or_path_noise(source):
    from nrnlib.__main__ import _is_noise

    for o in _executed(source):
        text = "".join(o.get("text", "")) if o.get("output_type") == "stream" else ""
        assert not (o.get("name") == "stderr" and _is_noise(text)), f"{source.stem}: progress noise {text[:80]!r}"
        plain = "".join(o.get("data", {}).get("text/plain", ""))
        assert "PosixPath(" not in plain, f"{source.stem}: a path printed as an output: {plain[:80]!r}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_every_committed_figure_also_has_a_png(source):
    """A repository viewer, nbconvert HTML or a printout shows the PNG; the plotly JSON needs a live Jupyter."""
    figures = [o for o in _executed(source) if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert all("image/png" in o["data"] for o in figures), \
        f"{source.stem}: {sum('image/png' not in o['data'] for o in figures)} of {len(figures)} figures lack a PNG"


def test_noise_filter_keeps_real_output():
    from nrnlib.__main__ import _is_noise

    assert _is_noise("\rattribution vs ablation:  25%|██▌       | 1/4 [02:04<06:14, 124.91s/it]")
    assert _is_noise("/x/tqdm/auto.py:21: TqdmWarning: IProgress not found. Please update jupyter\n")
    assert not _is_noise("UserWarning: Task 'trivia_qa' has only 40 'train' examples\n")
    assert not _is_noise("train loss 25% lower than at step 0\n")
