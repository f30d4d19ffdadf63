"""Plotly figures for the notebooks and their export to ``figures/`` (PNG + SVG via kaleido with
Debian's chromium, and interactive HTML)."""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from nrnlib.store import figures_dir, git_commit, write_text_atomic

TEMPLATE = "plotly_white"
_CHROME_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


class BrowserPathWarning(UserWarning):
    """``$BROWSER_PATH`` is set but does not point to an executable file."""


def _find_browser() -> str | None:
    """A Chrome/Chromium for kaleido: ``$BROWSER_PATH`` when it points to an executable file, else a
    standard location. A ``$BROWSER_PATH`` that points nowhere warns (``BrowserPathWarning``) and
    gives None, so no static export is attempted (kaleido would read the same variable and fail)."""
    configured = os.environ.get("BROWSER_PATH")
    if configured:
        path = Path(configured).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
        found = next((c for c in _CHROME_CANDIDATES if Path(c).exists()), None) or shutil.which("chromium")
        problem = "does not exist" if not path.exists() else "is not an executable file"
        warnings.warn(
            f"BROWSER_PATH={configured!r} {problem}, so figures cannot be exported as PNG/SVG. Point BROWSER_PATH "
            f"at a Chrome or Chromium binary{f' (found: {found})' if found else ''}, or unset it"
            f"{'' if found else ' and install one (`apt-get install chromium`)'}.",
            BrowserPathWarning, stacklevel=3,
        )
        return None
    for candidate in _CHROME_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    return shutil.which("chromium")


def _use_png_renderer() -> None:
    """Notebook figures as the interactive plot plus a static PNG (``$NRN_NOTEBOOK_PNG=1``, set by
    ``python -m nrnlib reproduce``), when a browser for kaleido is found."""
    browser = _find_browser()
    if browser is not None:
        os.environ.setdefault("BROWSER_PATH", browser)
        pio.renderers.default = "plotly_mimetype+png"


if os.environ.get("NRN_NOTEBOOK_PNG") == "1":
    _use_png_renderer()


def stamp_provenance(fig: go.Figure, profile: str | None = None) -> go.Figure:
    """Caption the figure with the profile and the commit it was drawn from (bottom right, grey), and
    keep both in ``fig.layout.meta``, so a PNG or SVG found alone still says where it came from."""
    from nrnlib.profiles import default_profile_name

    profile = profile or default_profile_name()
    commit = git_commit()
    short = commit[:10] + ("+dirty" if commit.endswith("+dirty") else "")
    fig.update_layout(meta={"profile": profile, "commit": commit},
                      margin_b=max(int(fig.layout.margin.b or 0), 90))
    fig.add_annotation(text=f"nrnlib · profile {profile} · commit {short}", xref="paper", yref="paper", x=1.0,
                       y=0.0, yshift=-70, xanchor="right", yanchor="top", showarrow=False,
                       font=dict(size=9, color="grey"))
    return fig


def default_formats() -> tuple[str, ...]:
    """``$NRN_FIGURE_FORMATS`` (comma-separated, e.g. ``html`` where static export is not wanted, as in
    ``make test``) or PNG + SVG + HTML."""
    chosen = tuple(f.strip() for f in os.environ.get("NRN_FIGURE_FORMATS", "").split(",") if f.strip())
    unknown = set(chosen) - {"png", "svg", "html"}
    if unknown:
        raise ValueError(f"NRN_FIGURE_FORMATS: unknown formats {sorted(unknown)}; use png, svg, html")
    return chosen or ("png", "svg", "html")


def save_figure(fig: go.Figure, name: str, formats: Sequence[str] | None = None,
                width: int = 900, height: int = 500, profile: str | None = None) -> list[Path]:
    """Write ``fig`` as ``figures/{name}.{png,svg,html}`` (``formats``, default ``default_formats()``),
    captioned with its profile (default:
    ``$NRN_PROFILE`` or the device's default) and commit (``stamp_provenance``); static formats need
    a Chrome (kaleido). Without one, writes the HTML only and warns with the install command.

    The HTML works offline (``plotly.min.js`` is written once beside it), and the figure's JSON goes
    to ``figures/json/{name}.json`` for the gallery (``nrnlib.gallery``).
    """
    stamp_provenance(fig, profile)
    formats = default_formats() if formats is None else tuple(formats)
    out, written = figures_dir(), []
    static = [f for f in formats if f != "html"]
    if "html" in formats:
        path = out / f"{name}.html"
        fig.write_html(path, include_plotlyjs="directory")
        written.append(path)
    fig_json = fig.to_plotly_json()
    fig_json["layout"] = {**fig_json.get("layout", {}), "width": width, "height": height}
    written.append(write_text_atomic(out / "json" / f"{name}.json", pio.to_json(fig_json)))
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


def _title_panels_by_value(fig: go.Figure) -> None:
    """Facet panels titled by their value: plotly's "column=value" (or "=value" where the column's
    label is empty) becomes "value"."""
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))


def task_scores_figure(table: pd.DataFrame, title: str) -> go.Figure:
    """Grouped bars of each task's primary metric per setting, with the chance level as a marker.

    ``table`` columns: task, category, setting, primary, chance, and optionally calibrated_accuracy: then
    each classification task gets a second bar per setting, "<setting>, calibrated" (Batch Calibration,
    notebook 00), in a darker shade of the setting's colour, so plain and calibrated accuracy sit side by side.
    """
    settings = list(dict.fromkeys(table.setting))
    bars = table.assign(shown=table.setting)
    if "calibrated_accuracy" in table:
        calibrated = table[table.category == "classification"]
        calibrated = calibrated.assign(primary=calibrated.calibrated_accuracy,
                                       shown=calibrated.setting + ", calibrated")
        bars = pd.concat([bars, calibrated], ignore_index=True)
    order = [name for setting in settings for name in (setting, f"{setting}, calibrated")]
    light, dark = px.colors.qualitative.Pastel1, px.colors.qualitative.Set1
    colours = {name: (dark if name.endswith("calibrated") else light)[settings.index(name.split(",")[0]) % len(dark)]
               for name in order}
    fig = px.bar(bars, x="task", y="primary", color="shown", barmode="group", facet_col="category",
                 category_orders={"shown": [n for n in order if n in set(bars.shown)]}, color_discrete_map=colours,
                 facet_col_spacing=0.06, template=TEMPLATE, title=title,
                 labels={"primary": "accuracy (classification) / ROUGE-L (generation)", "task": ""})
    fig.update_xaxes(matches=None, tickangle=-30)
    _title_panels_by_value(fig)  # "classification", not "category=classification"
    for i, category in enumerate(["classification", "generation"], start=1):
        part = table[(table.category == category)].drop_duplicates("task")
        fig.add_trace(go.Scatter(x=part.task, y=part.chance, mode="markers", name="chance" if i == 1 else None,
                                 showlegend=i == 1, marker=dict(symbol="line-ew-open", size=28, color="black",
                                                                line=dict(width=3))), row=1, col=i)
    fig.update_layout(legend_title_text="")
    return fig


def heatmaps_figure(
    matrices: Mapping[str, pd.DataFrame], title: str, colorbar_title: str, zmin: float | None = None,
    zmax: float | None = None, colorscale: str = "Viridis", zmid: float | None = None,
    x_title: str | None = None, y_title: str | None = None, blank_diagonal: bool = False,
) -> go.Figure:
    """Side-by-side heatmaps sharing one colour scale (one per entry of ``matrices``: rows x columns).
    ``blank_diagonal`` leaves a square matrix's diagonal empty (e.g. IoU of a set with itself, 1 by
    definition), so that the colour scale spans the off-diagonal values."""
    if blank_diagonal:
        matrices = {name: m.mask(pd.DataFrame(np.eye(len(m), dtype=bool), index=m.index, columns=m.columns))
                    for name, m in matrices.items()}
    fig = make_subplots(rows=1, cols=len(matrices), subplot_titles=list(matrices), horizontal_spacing=0.12)
    values = pd.concat([m.stack() for m in matrices.values()])
    lo = float(values.min()) if zmin is None else zmin
    hi = float(values.max()) if zmax is None else zmax
    for i, matrix in enumerate(matrices.values(), start=1):
        fig.add_trace(go.Heatmap(z=matrix.values, x=[str(c) for c in matrix.columns], y=[str(r) for r in matrix.index],
                                 zmin=lo, zmax=hi, zmid=zmid, colorscale=colorscale, showscale=i == 1,
                                 colorbar=dict(title=colorbar_title)), row=1, col=i)
        fig.update_yaxes(autorange="reversed", title_text=y_title if i == 1 else None, row=1, col=i)
        fig.update_xaxes(title_text=x_title, row=1, col=i)
    fig.update_layout(template=TEMPLATE, title=title)
    return fig


def palette(n: int) -> list[str]:
    """``n`` distinct colours: plotly's default 10 when they suffice, else Dark24 (24), else Alphabet (26)."""
    for colours in (px.colors.qualitative.Plotly, px.colors.qualitative.Dark24, px.colors.qualitative.Alphabet):
        if n <= len(colours):
            return list(colours)
    raise ValueError(f"palette: {n} groups is more than 26 distinguishable colours; facet or filter the table")


def lines_figure(table: pd.DataFrame, x: str, y: str, color: str, title: str, facet_col: str | None = None,
                 line_dash: str | None = None, chance: float | None = None, log_x: bool = False,
                 labels: Mapping[str, str] | None = None, facet_col_wrap: int = 0,
                 category_orders: Mapping[str, Sequence] | None = None) -> go.Figure:
    """Lines with markers (one per ``color`` group), optionally faceted (panel titles without the
    column's name), with a dotted chance line. Up to 10 groups use plotly's default colours; more use a
    24-colour palette, so no two share one. ``category_orders``: the legend's (and panels') order per
    column, else the order of first appearance."""
    fig = px.line(table, x=x, y=y, color=color, facet_col=facet_col, line_dash=line_dash, markers=True,
                  template=TEMPLATE, title=title, log_x=log_x, labels=dict(labels or {}),
                  facet_col_wrap=facet_col_wrap, color_discrete_sequence=palette(table[color].nunique()),
                  category_orders={k: list(v) for k, v in (category_orders or {}).items()})
    if facet_col is not None:
        _title_panels_by_value(fig)
    if chance is not None:
        fig.add_hline(y=chance, line_dash="dot", line_color="black", annotation_text="random set")
    return fig


def loss_curves_figure(runs: Sequence[Mapping], title: str, facet_col_wrap: int = 4) -> go.Figure:
    """The dev loss of protocol runs (``protocol.curves_frame``) at every evaluation: a panel per task
    (the arm name's second field), a colour per arm (its first field: task, random-total, all, ...)
    and a dash per seed. A run keeps the weights of its lowest point."""
    from nrnlib.protocol import curves_frame

    frame = curves_frame(runs)
    frame = frame[frame.split == "dev"]
    parts = frame.arm.str.split(":")
    frame = frame.assign(arm=parts.str[0], task=parts.str[1], seed=frame.seed.astype(str))
    return lines_figure(frame, "step", "loss", "arm", title, facet_col="task", line_dash="seed",
                        facet_col_wrap=facet_col_wrap, labels={"loss": "dev answer loss (nats)", "step": "step"})


VERDICT_COLORS = {"holds": "#1a9850", "does not hold": "#d73027", "inconclusive": "#878787"}


def claims_forest_figure(claims: Sequence, title: str, row: str = "task", facet: str | None = None,
                         x_title: str = "statistic", points: pd.DataFrame | None = None,
                         points_label: str = "one seed") -> go.Figure:
    """Forest plot of ``nrnlib.claims.Claim`` objects: per claim its estimate with the 95% CI as a
    horizontal bar, coloured by verdict, and the rule's threshold as a dashed line. ``row`` and
    ``facet`` are functions of the claim's ``scope`` split at ``"; "`` (part 0 → ``row``, part 1 →
    ``facet``), e.g. scope ``"antonym; global/all, random total"``. ``points`` (columns row, facet,
    estimate) adds small open markers in the same panels, e.g. the statistic of each seed alone."""
    if not claims:
        raise ValueError(f"claims_forest_figure({title!r}): no claims to draw (a rule with a CI needs at least two "
                         "units, e.g. two (order, seed) pairs or two seeds)")
    rows = []
    for c in claims:
        parts = c.scope.split("; ", 1)
        rows.append({"row": parts[0], "facet": parts[1] if len(parts) > 1 else "", "estimate": c.estimate,
                     "plus": c.ci_high - c.estimate, "minus": c.estimate - c.ci_low, "verdict": c.verdict,
                     "threshold": c.threshold, "statistic": c.statistic})
    table = pd.DataFrame(rows)
    colours = dict(VERDICT_COLORS)
    if points is not None:
        table = pd.concat([table, points[["row", "facet", "estimate"]].assign(verdict=points_label)],
                          ignore_index=True)
        colours[points_label] = "black"
    fig = px.scatter(table, x="estimate", y="row", color="verdict", error_x="plus", error_x_minus="minus",
                     facet_col="facet" if facet else None, facet_col_wrap=4 if facet else 0,
                     color_discrete_map=colours, template=TEMPLATE, title=title, hover_data=["statistic"],
                     category_orders={"verdict": list(colours), "row": list(dict.fromkeys(table.row))},
                     labels={"estimate": x_title, "row": row, "facet": facet or "", "verdict": ""})
    for threshold in table.threshold.dropna().unique():
        fig.add_vline(x=float(threshold), line_dash="dash", line_color="black", opacity=0.6)
    fig.update_traces(marker_size=9)
    fig.update_traces(marker=dict(size=6, symbol="circle-open", opacity=0.7), selector=dict(name=points_label))
    _title_panels_by_value(fig)
    return fig


def drop_ratio_figure(summary: pd.DataFrame, title: str, factor: float = 3.0) -> go.Figure:
    """Per task and panel (cell, random control): the ratio of the mean log-prob drop with the task's
    own neurons off to the mean drop with random neurons off, on a log axis with the ``factor`` line
    (Paper A's "at least 3x"). Ratios are scale-free, so classification and generation tasks share one
    axis. The bar around each ratio spans own CI / random CI, ``[own_lo / rnd_hi, own_hi / rnd_lo]``
    (wider than a bootstrap CI of the ratio; the verdict's own CI is ``claims_forest_figure``'s);
    a ratio whose random drop is not above 0 cannot be drawn and is listed in the title.
    ``summary``: ``experiments.drop_summary``."""
    wide = summary.pivot_table(index=["panel", "task"], columns="condition", values=["drop", "ci_low", "ci_high"],
                               sort=False)
    own, rnd = "task neurons off", "random neurons off"
    frame = pd.DataFrame({"ratio": wide["drop"][own] / wide["drop"][rnd],
                          "low": wide["ci_low"][own] / wide["ci_high"][rnd],
                          "high": wide["ci_high"][own] / wide["ci_low"][rnd].where(wide["ci_low"][rnd] > 0)}
                         ).reset_index()
    drawn = frame[wide["drop"][rnd].to_numpy() > 0]
    top = float(np.nanmax([drawn.high.max(), drawn.ratio.max(), factor])) * 2
    drawn = drawn.assign(high=drawn.high.fillna(top).clip(upper=top), low=drawn.low.clip(lower=1e-2))
    skipped = sorted(set(frame.panel + ": " + frame.task) - set(drawn.panel + ": " + drawn.task))
    fig = px.scatter(drawn, x="task", y="ratio", color="panel", log_y=True, template=TEMPLATE,
                     error_y=drawn.high - drawn.ratio, error_y_minus=drawn.ratio - drawn.low,
                     title=f"{title}; dashed: {factor:g}x, Paper A's rule"
                           + (f" (not drawn, random drop ≤ 0: {', '.join(skipped)})" if skipped else ""),
                     labels={"ratio": "own drop / random drop (log scale)", "task": "",
                             "panel": "cell, random control"})
    fig.add_hline(y=factor, line_dash="dash", line_color="black")
    fig.update_traces(marker_size=9)
    fig.update_layout(scattermode="group")
    return fig


def arm_bars_figure(table: pd.DataFrame, metrics: Mapping[str, str], title: str) -> go.Figure:
    """Per task, one bar per fine-tuning arm (its ``label`` column where there is one, e.g. "task
    (plain)"): mean over seeds, error bar = the range over seeds (min to max, so a bounded metric's
    bar never leaves its range); one row per metric (``metrics``: column → axis title), one column
    per task category (each panel with its own y axis)."""
    arm = "label" if "label" in table else "arm"
    category = table.drop_duplicates("task").set_index("task").category
    stats = pd.concat([
        table.groupby(["task", arm], sort=False)[metric].agg(["mean", "min", "max"]).reset_index().assign(metric=metric)
        for metric in metrics
    ])
    stats["category"] = stats.task.map(category)
    fig = px.bar(stats, x="task", y="mean", color=arm, barmode="group", error_y=stats["max"] - stats["mean"],
                 error_y_minus=stats["mean"] - stats["min"], template=TEMPLATE, facet_col="category",
                 facet_row="metric", category_orders={"metric": list(metrics)}, title=title,
                 labels={"mean": "", "task": ""})
    fig.update_xaxes(matches=None)
    fig.update_yaxes(matches=None, showticklabels=True)
    _title_panels_by_value(fig)
    for i, axis_title in enumerate(reversed(list(metrics.values())), start=1):  # facet rows count from the bottom
        fig.update_yaxes(title_text=axis_title, row=i, col=1)
    return fig


RANGE_COLOURS = {"shared": "rgba(99,110,250,0.12)", "transition": "rgba(239,85,59,0.15)",
                 "refinement": "rgba(0,204,150,0.12)"}


def ablation_scatter_figure(table: pd.DataFrame, summary: pd.DataFrame, title: str) -> go.Figure:
    """Attribution against ablation (``experiments.ablation_check_table``): per task, each drawn
    neuron's relevance ``R = Σ_b |Σ_p g·a|`` (x) against the measured ``Σ_b |ΔL_b|`` when it alone is
    zeroed (y), log-log, coloured by layer, with the line y = x (a perfect first-order estimate); the
    panel title carries Spearman's ρ [95% CI] from ``summary``."""
    rho = {r.task: f"{r.task}: ρ = {r.spearman:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]" for r in summary.itertuples()}
    data = table[(table.relevance > 0) & (table.measured_abs > 0)].assign(panel=lambda d: d.task.map(rho))
    fig = px.scatter(data, x="relevance", y="measured_abs", color="layer", facet_col="panel", facet_col_wrap=3,
                     log_x=True, log_y=True, hover_data=["neuron", "rank", "measured_signed"], template=TEMPLATE,
                     title=title, labels={"relevance": "relevance R (first-order estimate)",
                                          "measured_abs": "measured Σ|ΔL| (neuron zeroed)", "panel": ""})
    _title_panels_by_value(fig)
    if not data.empty:
        low = float(min(data.relevance.min(), data.measured_abs.min()))
        high = float(max(data.relevance.max(), data.measured_abs.max()))
        fig.add_trace(go.Scatter(x=[low, high], y=[low, high], mode="lines", name="y = x",
                                 line=dict(dash="dot", color="grey")),
                      row="all", col="all", exclude_empty_subplots=True)
    return fig


def tau_sweep_figure(sweep: pd.DataFrame, n_blocks: int, title: str,
                     reference: Mapping[str, Mapping[str, tuple[int, int]]] | None = None) -> go.Figure:
    """The layer ranges found at every τ (``experiments.range_sweep``): one row per τ, the blocks of
    each range as a coloured bar; extra rows for ``reference`` ranges (e.g. Paper B's rescaled ones,
    or the gap rule's), keyed by row label."""
    colours = {"shared": "rgb(99,110,250)", "transition": "rgb(239,85,59)", "refinement": "rgb(0,204,150)"}
    rows = [(f"τ = {r.tau:.2f}", r.range, r.first, r.end) for r in sweep.itertuples()]
    for label, ranges in (reference or {}).items():
        rows += [(label, name, a, b) for name, (a, b) in ranges.items()]
    frame = pd.DataFrame(rows, columns=["row", "range", "first", "end"])
    fig = go.Figure()
    for name, part in frame.groupby("range", sort=False):
        part = part[part.end > part["first"]]
        fig.add_trace(go.Bar(y=part.row, x=part.end - part["first"], base=part["first"] + 0.5, orientation="h",
                             name=name, marker_color=colours.get(name, "grey"),
                             customdata=list(zip(part["first"] + 1, part.end, strict=True)),
                             hovertemplate="%{y}: blocks %{customdata[0]}–%{customdata[1]}<extra>" + name
                             + "</extra>"))
    fig.update_layout(template=TEMPLATE, title=title, barmode="overlay",
                      yaxis=dict(categoryorder="array", categoryarray=list(dict.fromkeys(frame.row))[::-1]))
    fig.update_xaxes(title_text="block (1 = first)", range=[0.5, n_blocks + 0.5])
    return fig


def cka_references_figure(mean: pd.DataFrame, title: str, ranges: Mapping[str, tuple[int, int]] | None = None,
                          gap: pd.DataFrame | None = None) -> go.Figure:
    """Mean CKA with the controls per block with its 95% CI band over tasks (``experiments.mean_curves``):
    E and base per task group, the ceiling (dotted), the floor (dotted) and the cross-task controls
    (dash-dot); ``ranges`` shaded. With ``gap`` (``experiments.gap_ranges``' table) a second panel
    shows the E − base gap per block with its CI and the blocks the gap rule calls closer."""
    rows = 2 if gap is not None else 1
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        row_heights=[0.7, 0.3] if rows == 2 else None,
                        subplot_titles=("CKA with the single-task control C_t",
                                        "E − base gap (95% CI over tasks)")[:rows])
    colours = palette(mean["curve"].nunique())
    for i, (label, part) in enumerate(mean.groupby("curve", sort=False)):
        colour = colours[i]
        dash = ("dot" if label.startswith(("ceiling", "floor")) else "dashdot" if label.startswith("cross")
                else "dash" if "unseen" in label else "solid")
        fig.add_trace(go.Scatter(x=part.layer, y=part.cka, mode="lines+markers", name=label,
                                 line=dict(dash=dash, color=colour)), row=1, col=1)
        band = part.dropna(subset=["ci_low", "ci_high"])
        if not band.empty:
            fig.add_trace(go.Scatter(x=list(band.layer) + list(band.layer)[::-1],
                                     y=list(band.ci_high) + list(band.ci_low)[::-1], fill="toself",
                                     fillcolor=colour, opacity=0.15, line=dict(width=0), hoverinfo="skip",
                                     showlegend=False), row=1, col=1)
    for name, (a, b) in (ranges or {}).items():
        if b > a:
            fig.add_vrect(x0=a + 0.5, x1=b + 0.5, fillcolor=RANGE_COLOURS.get(name, "rgba(0,0,0,0.08)"),
                          line_width=0, annotation_text=name, annotation_position="top left", row=1, col=1)
    if gap is not None:
        fig.add_trace(go.Scatter(x=gap.block + 1, y=gap.gap, mode="markers", name="E − base gap",
                                 marker=dict(color=["rgb(239,85,59)" if c else "grey" for c in gap.closer]),
                                 error_y=dict(type="data", symmetric=False, array=gap.ci_high - gap.gap,
                                              arrayminus=gap.gap - gap.ci_low)), row=2, col=1)
        fig.add_hline(y=0, line_dash="dot", line_color="black", row=2, col=1)
    fig.update_xaxes(title_text="block (1 = first)", row=rows, col=1)
    fig.update_yaxes(title_text=f"CKA ({mean.estimator.iloc[0] if 'estimator' in mean and len(mean) else ''})",
                     row=1, col=1)
    fig.update_layout(template=TEMPLATE, title=title)
    return fig


def gap_figure(tables: Mapping[str, pd.DataFrame], title: str, delta: float = 0.0) -> go.Figure:
    """The E − base gap per block with its 95% CI over tasks, one trace per task group (``tables``:
    label → ``experiments.gap_ranges``' table: block, gap, ci_low, ci_high, closer); filled markers on
    the blocks the gap rule calls closer (the whole CI above ``delta``, the dotted line)."""
    fig = go.Figure()
    colours = palette(len(tables))
    for i, (label, table) in enumerate(tables.items()):
        colour = colours[i]
        offset = 0.12 * (i - (len(tables) - 1) / 2)  # side by side, so the error bars do not overlap
        fig.add_trace(go.Scatter(
            x=table.block + 1 + offset, y=table.gap, mode="markers+lines", name=label, line=dict(color=colour, width=1),
            marker=dict(color=[colour if c else "white" for c in table.closer], line=dict(color=colour, width=1.5),
                        size=8),
            error_y=dict(type="data", symmetric=False, array=table.ci_high - table.gap,
                         arrayminus=table.gap - table.ci_low, color=colour),
            customdata=list(zip(table.block + 1, table.ci_low, table.ci_high, strict=True)),
            hovertemplate="block %{customdata[0]}: %{y:.4f} [%{customdata[1]:.4f}, %{customdata[2]:.4f}]<extra>"
                          + label + "</extra>"))
    fig.add_hline(y=delta, line_dash="dot", line_color="black")
    fig.update_layout(template=TEMPLATE, title=title, xaxis_title="block (1 = first)",
                      yaxis_title="CKA(E, C_t) − CKA(base, C_t), mean over tasks")
    return fig


def gain_curves_figure(curves: pd.DataFrame, title: str, y_title: str = "log-prob gain over the untrained model (nats)"
                       ) -> go.Figure:
    """Gain against the proportion of trained neurons (log x), one line per ``curve`` with its 95% CI
    as error bars, one panel per trained ``category`` (``generalization.curve_cis``), a zero line."""
    table = curves.assign(plus=curves.ci_high - curves.gain, minus=curves.gain - curves.ci_low)
    fig = px.line(table, x="p", y="gain", color="curve", facet_col="category", markers=True, log_x=True,
                  error_y="plus", error_y_minus="minus", template=TEMPLATE, title=title,
                  labels={"p": "proportion of task neurons trained", "gain": y_title, "curve": ""})
    fig.add_hline(y=0.0, line_dash="dot", line_color="black")
    fig.for_each_annotation(lambda a: a.update(text=f"trained: {a.text.split('=', 1)[-1]}"))
    fig.update_yaxes(matches=None, showticklabels=True)
    return fig


def metric_intervals_figure(summary: pd.DataFrame, title: str, y_title: str = "") -> go.Figure:
    """Per ``method`` (x) its mean with the 95% CI as error bars, one panel per ``metric`` with its own
    y axis and a zero line (``summary``: method, metric, mean, ci_low, ci_high; e.g.
    ``experiments.metrics_table``)."""
    table = summary.assign(plus=summary.ci_high - summary["mean"], minus=summary["mean"] - summary.ci_low)
    fig = px.scatter(table, x="method", y="mean", color="method", facet_col="metric", error_y="plus",
                     error_y_minus="minus", template=TEMPLATE, title=title, hover_data=["n"] if "n" in table else None,
                     labels={"mean": y_title, "method": ""})
    fig.add_hline(y=0.0, line_dash="dot", line_color="black", opacity=0.6)
    fig.update_traces(marker_size=10)
    fig.update_yaxes(matches=None, showticklabels=True)
    fig.update_xaxes(tickangle=-40)
    _title_panels_by_value(fig)
    return fig
