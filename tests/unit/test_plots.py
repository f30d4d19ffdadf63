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
