"""The offline gallery renders every figure in headless Chromium with no script error."""

import re
import shutil
import subprocess

import plotly.graph_objects as go
import pytest

from nrnlib import gallery, plots

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture()
def figures(tmp_path, monkeypatch):
    monkeypatch.setenv("NRN_FIGURES", str(tmp_path))
    plots.save_figure(go.Figure(go.Bar(x=["a", "b"], y=[1, 2]), layout_title_text="bars"), "00_bars",
                      formats=("html",), profile="smoke")
    plots.save_figure(go.Figure(go.Heatmap(z=[[1, 2], [3, 4]]), layout_title_text="heat </script>"),
                      "01_heat", formats=("html",), profile="smoke")
    (tmp_path / "02_old.png").write_bytes(b"")  # a figure drawn before JSON was kept: shown as an image
    return tmp_path


def test_gallery_lists_every_figure_with_its_caption(figures):
    page = gallery.build_gallery(figures).read_text()
    assert page.count("<figure>") == 3 and "profile smoke" in page and 'src="02_old.png"' in page
    assert "</script>" not in page.split("heat")[1].split("\n")[0]  # a title cannot close the script tag
    assert (figures / "plotly.min.js").stat().st_size > 1_000_000  # offline: plotly.js beside the page


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (make setup installs Debian's chromium)")
def test_gallery_renders_in_headless_chromium(figures, tmp_path):
    index = gallery.build_gallery(figures)
    run = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", "--dump-dom", index.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    rendered = re.findall(r'<div id="fig-[^"]+" class="nrn-figure[^"]*js-plotly-plot', run.stdout)
    assert len(rendered) == 2, run.stdout[:2000]  # both interactive figures drawn by plotly.js
    assert run.stdout.count('class="main-svg"') >= 2
    assert "Uncaught" not in run.stderr and "ReferenceError" not in run.stderr, run.stderr[-2000:]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium for kaleido's static export")
def test_static_export_writes_a_png(tmp_path, monkeypatch):
    """make test skips PNG/SVG export in the notebooks (NRN_FIGURE_FORMATS=html): export is checked here once."""
    monkeypatch.setenv("NRN_FIGURES", str(tmp_path))
    monkeypatch.setenv("NRN_FIGURE_FORMATS", "png")
    written = plots.save_figure(go.Figure(go.Bar(x=["a"], y=[1])), "00_one", width=300, height=200, profile="smoke")
    png = tmp_path / "00_one.png"
    assert png in written and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setenv("NRN_FIGURE_FORMATS", "gif")
    with pytest.raises(ValueError, match="NRN_FIGURE_FORMATS"):
        plots.default_formats()
