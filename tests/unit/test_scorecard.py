"""nrnlib.scorecard: REPRODUCTION.md is what the command writes, and rows on a synthetic results folder."""

import json

import pytest

from nrnlib import claims as C
from nrnlib import scorecard
from nrnlib.store import REPO_ROOT


def test_reproduction_md_is_up_to_date():
    written = (REPO_ROOT / "REPRODUCTION.md").read_text()
    assert written == scorecard.render(REPO_ROOT / "figures" / "results"), (
        "REPRODUCTION.md differs from the results in figures/results: run `python -m nrnlib scorecard`")


def test_catalogue_covers_both_papers_with_unique_ids():
    ids = [e.id for e in scorecard.CATALOGUE]
    assert len(ids) == len(set(ids))
    assert {e.paper for e in scorecard.CATALOGUE} == {"A", "B", "ours"}
    for entry in scorecard.CATALOGUE:
        assert entry.id.split(".")[0] == entry.paper and entry.notebook[:2].isdigit()


def _claim(id: str, low: float, high: float, profile: str = "standard", scope: str = "all tasks") -> C.Claim:
    return C.make_claim(id, paper=id.split(".")[0], statement="s", paper_value="-", statistic="mean IoU",
                        estimate=C.Estimate((low + high) / 2, low, high, 12), threshold=0.1, direction=">",
                        unit="tasks", scope=scope, notebook="01_detect_task_neurons", figure="01_stability",
                        profile=profile)


@pytest.fixture
def results_folder(tmp_path, monkeypatch):
    """A figures folder with a schema-2 file (via store.save_results), an old-format file and nothing else."""
    from nrnlib import store

    monkeypatch.setenv("NRN_FIGURES", str(tmp_path))
    store.reset_ledger()
    store.save_results("01_detect_task_neurons_standard", {"k": 0.1}, profile="standard", claims=[
        _claim("ours.detection.stability", 0.4, 0.6, scope="plain"),
        _claim("ours.detection.stability", 0.05, 0.3, scope="specific"),
        _claim("ours.detection.specific_overlap", 0.0, 0.05),
        _claim("ours.detection.stability.per_task", 0.5, 0.5, scope="antonym"),
    ])
    store.save_results("01_detect_task_neurons_smoke", {"k": 0.1}, profile="smoke",
                       claims=[_claim("ours.detection.stability", 0.0, 0.01, profile="smoke")])
    old = {"provenance": {"commit": "abcdef0123456789+dirty", "profile": "standard"},
           "results": {"checks": [
               {"claim": "seen tasks show transition layers", "transition_blocks": 0, "holds": False},
               {"claim": "task-neuron fine-tuning beats random", "holds_on": 5, "of": 6}]}}
    (tmp_path / "results" / "07_layer_by_layer_standard.json").write_text(json.dumps(old))
    return tmp_path / "results"


def _row(text: str, id: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"| `{id}` |")]


def test_rows_on_a_synthetic_results_folder(results_folder):
    text = scorecard.render()  # NRN_FIGURES points at the synthetic folder
    assert text == scorecard.render(results_folder)
    stability = _row(text, "ours.detection.stability")
    assert len(stability) == 2  # two scopes; the standard file wins over the smoke one
    assert "0.500 [0.400, 0.600], rule > 0.1" in stability[0] and "**holds**" in stability[0]
    assert "plain" in stability[0] and "| standard |" in stability[0]
    assert "inconclusive" in stability[1] and "specific" in stability[1]
    assert "**does not hold**" in _row(text, "ours.detection.specific_overlap")[0]
    assert "not yet measured (`04_generalization_overlap`)" in _row(text, "A.generalization.id_peak")[0]
    transition = _row(text, "B.ranges.transition")[0]
    assert "produced by the old engine (no CI); re-run pending" in transition
    assert "seen tasks show transition layers: does not hold" in transition and "abcdef0+dirty" in transition
    early = _row(text, "B.pretrained.early_similarity")[0]
    assert "not yet measured" in early and "no verdict on it" in early
    # commits from the provenance of the schema-2 file; per-task claims in the detail section
    commits = scorecard.read_results(results_folder / "01_detect_task_neurons_standard.json").commits
    assert commits and stability[0].endswith(f"| {', '.join(commits)} |")
    assert "`ours.detection.stability.per_task`" in text.split("## Per-task and supporting claims")[1]
    assert len([line for line in text.splitlines() if line.startswith("| `")]) == len(scorecard.CATALOGUE) + 2


def test_check_flag_and_cli(results_folder, tmp_path, capsys):
    from nrnlib.__main__ import main

    output = tmp_path / "REPRODUCTION.md"
    assert main(["scorecard", "--check", "--output", str(output)]) == 1  # missing
    assert main(["scorecard", "--output", str(output)]) == 0
    assert output.read_text() == scorecard.render(results_folder)
    assert main(["scorecard", "--check", "--output", str(output)]) == 0
    output.write_text(output.read_text() + "edited by hand\n")
    assert main(["scorecard", "--check", "--output", str(output)]) == 1
    assert "out of date" in capsys.readouterr().out


def test_unreadable_claims_are_reported_not_raised(results_folder):
    path = results_folder / "00_zero_few_shot_standard.json"
    bad = {"schema": 2, "name": "00_zero_few_shot_standard", "provenance": {"profile": "standard", "entries": {}},
           "claims": [{"id": "ours.foundation.above_chance", "verdict": "holds"}], "results": {}}
    path.write_text(json.dumps(bad))
    text = scorecard.render(results_folder)
    assert "unreadable claim ours.foundation.above_chance" in text
    assert "not yet measured" in _row(text, "ours.foundation.above_chance")[0]
