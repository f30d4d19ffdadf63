"""``figures/index.html``: every figure of the suite on one offline page, with its caption, profile,
commit and a link to the notebook that drew it.

A figure saved by ``plots.save_figure`` has its plotly JSON in ``figures/json/{name}.json``: the
gallery draws it interactively with the ``plotly.min.js`` written beside the figures (no network).
A figure with no JSON (drawn before the JSON was kept) is shown from its PNG.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from nrnlib.store import REPO_ROOT, figures_dir, write_text_atomic

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>nrnlib figures</title>
<script src="plotly.min.js"></script>
<style>
body {{ font-family: sans-serif; max-width: 1500px; margin: 2em auto; color: #222; }}
figure {{ margin: 2em 0; border-top: 1px solid #ddd; padding-top: 1em; }}
figcaption {{ font-size: 0.9em; color: #555; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>nrnlib: the figures</h1>
<p>Task-specific neurons (Leng &amp; Xiong) and layer-by-layer CKA (Zhao, Ziser &amp; Cohen) on SmolLM2-135M.
Each figure names the profile and commit it was drawn from; verdicts with confidence intervals are in
<a href="../REPRODUCTION.md">REPRODUCTION.md</a>.</p>
{figures}
</body></html>
"""


def _notebook_of(name: str) -> str | None:
    """The notebook that draws figure ``name`` (figures are named after their notebook's prefix)."""
    matches = sorted((REPO_ROOT / "notebooks").glob(f"{name[:2]}_*.ipynb"))
    return f"../notebooks/{matches[0].name}" if matches else None


def _caption(name: str, layout: dict) -> str:
    title = layout.get("title", {})
    title = title.get("text", "") if isinstance(title, dict) else str(title or "")
    meta = layout.get("meta") or {}
    where = f"profile {meta['profile']}, commit {str(meta['commit'])[:10]}" if meta else "profile and commit: see PNG"
    notebook = _notebook_of(name)
    link = f' — <a href="{html.escape(notebook)}">{html.escape(Path(notebook).stem)}</a>' if notebook else ""
    return f"<b>{html.escape(name)}</b>: {html.escape(title)} ({html.escape(where)}){link}"


def _figure_block(name: str, folder: Path) -> str:
    json_path = folder / "json" / f"{name}.json"
    if json_path.exists():
        fig = json.loads(json_path.read_text())
        layout = fig.get("layout", {})
        data = json.dumps(fig.get("data", [])).replace("</", "<\\/")
        lay = json.dumps(layout).replace("</", "<\\/")
        div = f"fig-{name}"
        body = (f'<div id="{html.escape(div)}" class="nrn-figure"></div>\n'
                f'<script>Plotly.newPlot("{div}", {data}, {lay}, {{"responsive": true}});</script>')
    else:
        layout = {}
        body = f'<img class="nrn-figure" src="{html.escape(name)}.png" alt="{html.escape(name)}">'
    return f"<figure>\n{body}\n<figcaption>{_caption(name, layout)}</figcaption>\n</figure>"


def figure_names(folder: Path | None = None) -> list[str]:
    """Every figure in the folder: those with a JSON, and those with only a PNG, sorted by name."""
    folder = folder or figures_dir()
    names = {p.stem for p in (folder / "json").glob("*.json")} | {p.stem for p in folder.glob("*.png")}
    return sorted(names)


def build_gallery(folder: Path | None = None) -> Path:
    """Write ``index.html`` in the figures folder (and ``plotly.min.js`` beside it if missing)."""
    folder = Path(folder or figures_dir())
    names = figure_names(folder)
    if not names:
        raise FileNotFoundError(f"no figures in {folder}: run the notebooks first (python -m nrnlib reproduce)")
    script = folder / "plotly.min.js"
    if not script.exists():
        from plotly.offline import get_plotlyjs

        write_text_atomic(script, get_plotlyjs())
    page = _PAGE.format(figures="\n".join(_figure_block(name, folder) for name in names))
    return write_text_atomic(folder / "index.html", page)
