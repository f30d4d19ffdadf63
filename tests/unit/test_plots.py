"""Figures whose colours must tell their lines apart."""

import pandas as pd
import pytest

from nrnlib import plots


@pytest.mark.parametrize("groups", [3, 12, 15, 26])
def test_every_line_of_a_lines_figure_has_its_own_colour(groups):
    table = pd.DataFrame([{"step": s, "loss": 1.0 / (s + 1) + g, "model": f"m{g}"}
                          for g in range(groups) for s in range(3)])
    fig = plots.lines_figure(table, "step", "loss", "model", "losses")
    colours = [trace.line.color for trace in fig.data]
    assert len(colours) == groups and len(set(colours)) == groups


def test_palette_refuses_more_groups_than_it_can_tell_apart():
    with pytest.raises(ValueError, match="27 groups"):
        plots.palette(27)


def test_heatmap_blank_diagonal_leaves_the_scale_to_the_other_cells():
    import numpy as np

    from nrnlib.plots import heatmaps_figure

    m = pd.DataFrame([[1.0, 0.2, 0.3], [0.2, 1.0, 0.4], [0.3, 0.4, 1.0]], index=list("abc"), columns=list("abc"))
    fig = heatmaps_figure({"iou": m}, "t", "IoU", zmin=0, blank_diagonal=True, x_title="x")
    z = np.asarray(fig.data[0].z, dtype=float)
    assert np.isnan(np.diag(z)).all() and fig.data[0].zmax == 0.4  # the scale ends at the largest off-diagonal
    assert m.values[0, 0] == 1.0  # the caller's matrix is untouched


def test_arm_bars_span_the_seeds_min_to_max():
    from nrnlib.plots import arm_bars_figure

    rows = pd.DataFrame({"task": ["t"] * 3, "category": ["classification"] * 3, "arm": ["task"] * 3,
                         "logprob": [-1.0, -2.0, -4.0], "decoded": [0.9, 1.0, 0.95]})
    fig = arm_bars_figure(rows, {"logprob": "nats", "decoded": "accuracy"}, "t")
    bars = {t.yaxis: t for t in fig.data}
    accuracy = next(t for t in bars.values() if t.y[0] == pytest.approx(0.95))
    assert accuracy.y[0] + accuracy.error_y.array[0] == pytest.approx(1.0)  # the bar ends at the best seed, not past 1
    logprob = next(t for t in bars.values() if t.y[0] == pytest.approx(-7 / 3))
    assert logprob.y[0] - logprob.error_y.arrayminus[0] == pytest.approx(-4.0)


def test_task_scores_show_calibrated_accuracy_beside_plain_for_classification_only():
    table = pd.DataFrame([
        {"task": "pol", "category": "classification", "setting": s, "primary": acc, "chance": 0.5,
         "calibrated_accuracy": cal}
        for s, acc, cal in [("zero-shot", 0.4, 0.7), ("2-shot", 0.45, 0.75)]
    ] + [
        {"task": "ant", "category": "generation", "setting": s, "primary": r, "chance": 0.0,
         "calibrated_accuracy": float("nan")}
        for s, r in [("zero-shot", 0.02), ("2-shot", 0.07)]
    ])
    fig = plots.task_scores_figure(table, "t")
    bars = {(trace.name, x): y for trace in fig.data if trace.type == "bar"
            for x, y in zip(trace.x, trace.y, strict=True)}
    assert bars == {("zero-shot", "pol"): 0.4, ("2-shot", "pol"): 0.45, ("zero-shot", "ant"): 0.02,
                    ("2-shot", "ant"): 0.07, ("zero-shot, calibrated", "pol"): 0.7,
                    ("2-shot, calibrated", "pol"): 0.75}
    colours = {trace.name: trace.marker.color for trace in fig.data if trace.type == "bar"}
    assert len(set(colours.values())) == 4


def test_forest_figure_without_claims_says_why():
    """No claims (a rule needs two units, e.g. one order x one seed in notebook 06) is a clear error."""
    with pytest.raises(ValueError, match="no claims to draw"):
        plots.claims_forest_figure([], "verdicts")


def test_lines_figure_titles_panels_by_value_and_orders_the_legend_as_asked():
    import pandas as pd

    from nrnlib.plots import lines_figure

    table = pd.DataFrame({"step": [0, 1, 0, 1, 0, 1], "loss": [3.0, 2.0, 3.0, 2.5, 3.0, 1.0],
                          "p": ["p = 10%", "p = 10%", "p = 1%", "p = 1%", "p = 100%", "p = 100%"],
                          "panel": ["alone: a", "alone: a", "joint: b", "joint: b", "joint: b", "joint: b"]})
    fig = lines_figure(table, "step", "loss", "p", "t", facet_col="panel",
                       category_orders={"p": ["p = 1%", "p = 10%", "p = 100%"]})
    assert sorted(a.text for a in fig.layout.annotations) == ["alone: a", "joint: b"]
    assert list(dict.fromkeys(t.name for t in fig.data)) == ["p = 1%", "p = 10%", "p = 100%"]
    unordered = lines_figure(table, "step", "loss", "p", "t", facet_col="panel")
    assert list(dict.fromkeys(t.name for t in unordered.data)) == ["p = 10%", "p = 1%", "p = 100%"]
