"""Plotly figures for the notebooks and their export to ``figures/`` (PNG + SVG via kaleido with
Debian's chromium, and interactive HTML)."""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

TEMPLATE = "plotly_white"
_CHROME_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def figures_dir() -> Path:
    """``$NRN_FIGURES`` or the repository's ``figures/`` folder."""
    root = Path(os.environ.get("NRN_FIGURES", Path(__file__).resolve().parent.parent / "figures"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _find_browser() -> str | None:
    if os.environ.get("BROWSER_PATH"):
        return os.environ["BROWSER_PATH"]
    for candidate in _CHROME_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    return shutil.which("chromium")


def save_figure(fig: go.Figure, name: str, formats: Sequence[str] = ("png", "svg", "html"),
                width: int = 900, height: int = 500) -> list[Path]:
    """Write ``fig`` as ``figures/{name}.{png,svg,html}``; static formats need a Chrome (kaleido).

    Without one, writes the HTML only and warns with the install command.
    """
    out, written = figures_dir(), []
    static = [f for f in formats if f != "html"]
    if "html" in formats:
        path = out / f"{name}.html"
        fig.write_html(path, include_plotlyjs="cdn")
        written.append(path)
    if static:
        browser = _find_browser()
        if browser is None:
            warnings.warn("No chromium found for PNG/SVG export: `apt-get install chromium` "
                          "(or set BROWSER_PATH); wrote HTML only.", stacklevel=2)
            return written
        os.environ.setdefault("BROWSER_PATH", browser)
        for fmt in static:
            path = out / f"{name}.{fmt}"
            fig.write_image(path, width=width, height=height, scale=2 if fmt == "png" else 1)
            written.append(path)
    return written


def task_scores_figure(table: pd.DataFrame, title: str) -> go.Figure:
    """Grouped bars of each task's primary metric per setting, with the chance level as a marker.

    ``table`` columns: task, category, setting, primary, chance.
    """
    fig = px.bar(table, x="task", y="primary", color="setting", barmode="group", facet_col="category",
                 facet_col_spacing=0.06, template=TEMPLATE, title=title,
                 labels={"primary": "accuracy (classification) / ROUGE-L (generation)", "task": ""})
    fig.update_xaxes(matches=None, tickangle=-30)
    for i, category in enumerate(["classification", "generation"], start=1):
        part = table[(table.category == category)].drop_duplicates("task")
        fig.add_trace(go.Scatter(x=part.task, y=part.chance, mode="markers", name="chance" if i == 1 else None,
                                 showlegend=i == 1, marker=dict(symbol="line-ew-open", size=28, color="black",
                                                                line=dict(width=3))), row=1, col=i)
    fig.update_layout(legend_title_text="")
    return fig
