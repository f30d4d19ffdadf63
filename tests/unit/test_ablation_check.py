"""Attribution against ablation: the strata, the draw, the measured loss changes against an independent
hand computation (plain torch hooks on the Hugging Face modules), and the rank correlation."""

import numpy as np
import pytest
import torch

from nrnlib import encoding
from nrnlib.attribution import attribute
from nrnlib.experiments import attribution_vs_ablation as AC


def test_stratum_edges_cover_the_ranks_once():
    """n + 1 strictly increasing edges from 0 to N; log spacing makes the first strata single ranks;
    linear spacing gives equal widths; more strata than ranks is refused."""
    for spacing in AC.SPACINGS:
        edges = AC.stratum_edges(46080, 50, spacing)
        assert len(edges) == 51 and edges[0] == 0 and edges[-1] == 46080 and (np.diff(edges) > 0).all()
    log = AC.stratum_edges(46080, 50, "log")
    assert list(log[:4]) == [0, 1, 2, 3] and log[25] == round(46080 ** 0.5)
    assert list(AC.stratum_edges(100, 4, "linear")) == [0, 25, 50, 75, 100]
    assert list(AC.stratum_edges(5, 5, "log")) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="strata"):
        AC.stratum_edges(3, 4)


def test_draw_neurons_takes_one_neuron_per_stratum():
    scores = torch.rand(3, 40, generator=torch.Generator().manual_seed(0))
    table = AC.draw_neurons(scores, n_neurons=10, seed=1)
    edges = AC.stratum_edges(120, 10)
    flat = scores.flatten()
    ranks = torch.argsort(-flat)
    assert list(table.stratum) == list(range(10))
    for row in table.itertuples():
        assert edges[row.stratum] <= row.rank < edges[row.stratum + 1]
        assert int(ranks[row.rank]) == row.layer * 40 + row.neuron
        assert row.relevance == pytest.approx(float(scores[row.layer, row.neuron]))
    assert table.equals(AC.draw_neurons(scores, n_neurons=10, seed=1))


def _hand_losses(model, hf_mlps, task, examples, layer=None, neuron=None, batch_size=4) -> np.ndarray:
    """Per-example mean answer-token cross-entropy from the HF model's logits, with neuron ``neuron``
    of ``layer`` zeroed by a plain torch forward pre-hook on the down projection's input (batches of
    ``batch_size`` as in the library, so fp32 padding shapes, hence rounding, are the same)."""
    handle = None
    if layer is not None:
        _, proj = hf_mlps(model)[layer]

        def zero(module, args):
            x = args[0].clone()
            x[..., neuron] = 0
            return (x,) + args[1:]

        handle = proj.register_forward_pre_hook(zero)
    try:
        out = []
        for start in range(0, len(examples), batch_size):
            batch = encoding.encode_examples(model, task, examples[start: start + batch_size])
            with torch.no_grad():
                logits = model.original_model(input_ids=batch.input_ids,
                                              attention_mask=batch.attention_mask.long()).logits
            logp = logits.float().log_softmax(-1).double()
            for b in range(len(batch)):
                positions = batch.target_mask[b].nonzero().flatten()
                tokens = batch.input_ids[b, positions]
                out.append(float(-logp[b, positions - 1, tokens].mean()))
        return np.asarray(out)
    finally:
        if handle is not None:
            handle.remove()


def test_measured_changes_match_a_hand_computation(tiny_model, hf_mlps, parity_task, tmp_path, monkeypatch):
    """Each drawn neuron's Σ_b |ΔL_b| and Σ_b ΔL_b equal an independent loop (own hooks, own loss);
    its relevance is attribute's score on the same examples; the rerun is served from the cache."""
    monkeypatch.setenv("NRN_CACHE", str(tmp_path))
    check = AC.ablation_check(tiny_model, parity_task, n_examples=6, n_neurons=8, batch_size=4, progress=False)
    table = check.table
    assert len(table) == 8 and set(table.task) == {"parity"} and (table.n_examples == 6).all()
    scores = attribute(tiny_model, parity_task, n_examples=6, batch_size=4, progress=False)
    examples = list(parity_task.train[:6])
    intact = _hand_losses(tiny_model, hf_mlps, parity_task, examples)
    # the losses are fp32 (losses.answer_token_logits), about 10.8 on the random tiny model, where
    # fp32 spacing is 1e-6: the library's and the hand loop's matmul shapes differ, so allow a few ulp
    # per example
    tol = 6 * 4 * float(np.spacing(np.float32(intact.max())))
    for row in table.itertuples():
        assert row.relevance == pytest.approx(float(scores[row.layer, row.neuron]))
        change = _hand_losses(tiny_model, hf_mlps, parity_task, examples, row.layer, row.neuron) - intact
        assert row.measured_abs == pytest.approx(np.abs(change).sum(), rel=1e-4, abs=tol)
        assert row.measured_signed == pytest.approx(change.sum(), rel=1e-4, abs=tol)

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed a cached measurement")

    monkeypatch.setattr(AC, "per_example_losses", refuse)
    again = AC.ablation_check(tiny_model, parity_task, n_examples=6, n_neurons=8, batch_size=4, progress=False)
    assert again.table.equals(table) and again.spearman == check.spearman


def test_first_order_estimate_ranks_the_top_neurons(tiny_model, parity_task, tmp_path, monkeypatch):
    """60 neurons of 288 with log strata (the 38 most relevant all measured, then a spread over the
    rest): the relevance ranks the measured effects well overall (ρ > 0.9) and among the 20 most
    relevant neurons (ρ > 0.9); for the five most relevant the estimate is within 5% of the
    measured Σ_b |ΔL_b| (zeroing one neuron of a random model is a small perturbation)."""
    from scipy.stats import spearmanr

    monkeypatch.setenv("NRN_CACHE", str(tmp_path))
    check = AC.ablation_check(tiny_model, parity_task, n_examples=8, n_neurons=60, batch_size=8, progress=False)
    assert check.spearman.n == 60 and check.spearman.ci_low <= check.spearman.estimate <= check.spearman.ci_high
    assert check.spearman.estimate > 0.9
    top = check.table.nsmallest(20, "rank")
    assert list(top["rank"]) == list(range(20))
    assert spearmanr(top.relevance, top.measured_abs).statistic > 0.9
    np.testing.assert_allclose(top.relevance[:5], top.measured_abs[:5], rtol=0.05)


def test_answer_positions_aggregation_is_refused(tiny_model, parity_task):
    with pytest.raises(ValueError, match="every position"):
        AC.ablation_check(tiny_model, parity_task, aggregation="answer_positions")


def test_measurement_keys_hold_examples_neuron_and_model(tiny_model, parity_task, tmp_path, monkeypatch):
    """The key of every measurement holds the task digest of exactly the examples used (instruction,
    labels and those examples change it; train examples past them and test examples do not), the
    layer and neuron (one entry per neuron, one for the intact model) and the model's weights."""
    from dataclasses import replace

    from nrnlib import store
    from nrnlib.model_state import restored_after

    monkeypatch.setenv("NRN_CACHE", str(tmp_path))
    seen = []
    real = store.make_key

    def spy(*args, **kwargs):
        key = real(*args, **kwargs)
        if key["kind"] == "ablation_check":
            seen.append(key)
        return key

    monkeypatch.setattr(store, "make_key", spy)

    def run(task):
        seen.clear()
        AC.ablation_check(tiny_model, task, n_examples=4, n_neurons=8, batch_size=4, progress=False)
        return list(seen)

    base = run(parity_task)
    cells = [(k["settings"]["layer"], k["settings"]["neuron"]) for k in base]
    assert len(base) == 9 and cells[0] == (-1, None) and len(set(cells)) == 9
    first = parity_task.train[0]
    variants = {
        "instruction": (replace(parity_task, instruction=parity_task.instruction + " Please."), True),
        "labels": (replace(parity_task, labels=(*parity_task.labels, "maybe")), True),
        "examples": (replace(parity_task, train=({**first, "input": first["input"] + "?"}, *parity_task.train[1:])),
                     True),
        "later train examples": (replace(parity_task, train=(*parity_task.train[:4], *parity_task.train[5:])), False),
        "test examples": (replace(parity_task, test=parity_task.test[:-1]), False),
    }
    for name, (variant, changes) in variants.items():
        keys = run(variant)
        assert (keys[0]["tasks"] != base[0]["tasks"]) == changes, name
    with restored_after(tiny_model), torch.no_grad():
        next(iter(tiny_model.parameters())).add_(1e-3)
        moved = run(parity_task)
    assert moved[0]["model"] != base[0]["model"] and moved[0]["tasks"] == base[0]["tasks"]


def test_table_over_tasks_reuses_given_scores(tiny_model, parity_task, tmp_path, monkeypatch):
    """ablation_check_table: the profile's attribution examples, one summary row per task; given
    scores (notebook 01's relevance) are the relevance column as passed."""
    from dataclasses import replace

    from nrnlib.profiles import get_profile

    monkeypatch.setenv("NRN_CACHE", str(tmp_path))
    profile = replace(get_profile("smoke"), n_attribution=8, batch_size=8)
    table, summary = AC.ablation_check_table(tiny_model, profile, [parity_task], n_neurons=10, progress=False)
    assert list(summary.task) == ["parity"] and summary.n_neurons[0] == 10 and summary.n_examples[0] == 8
    assert summary.ci_low[0] <= summary.spearman[0] <= summary.ci_high[0] and len(table) == 10
    scores = attribute(tiny_model, parity_task, n_examples=8, batch_size=8, progress=False)
    doubled, _ = AC.ablation_check_table(tiny_model, profile, [parity_task], n_neurons=10,
                                         scores={"parity": 2 * scores}, progress=False)
    np.testing.assert_allclose(doubled.relevance, 2 * table.relevance, rtol=1e-6)
    np.testing.assert_allclose(doubled.measured_abs, table.measured_abs)


def test_ablation_claims_decide_each_task_against_rho_min():
    """Per task the claim carries the summary's rho and CI against RHO_MIN; the tally counts tasks."""
    import pandas as pd

    from nrnlib.experiments.verdicts import RHO_MIN, ablation_claims

    summary = pd.DataFrame([
        {"task": "a", "spearman": 0.8, "ci_low": 0.7, "ci_high": 0.9, "n_neurons": 50, "method": "m"},
        {"task": "b", "spearman": 0.55, "ci_low": 0.3, "ci_high": 0.7, "n_neurons": 50, "method": "m"},
        {"task": "c", "spearman": 0.2, "ci_low": 0.0, "ci_high": 0.4, "n_neurons": 50, "method": "m"}])
    claims = ablation_claims(summary, "smoke", model_label="null model: ")
    verdicts = {c.scope: c.verdict for c in claims if c.id.endswith("per_task")}
    assert verdicts == {"null model: a": "holds", "null model: b": "inconclusive", "null model: c": "does not hold"}
    [tally] = [c for c in claims if not c.id.endswith("per_task")]
    assert RHO_MIN == claims[0].threshold and (tally.estimate, tally.ci_high) == (1, 2)
    assert tally.verdict == "inconclusive"  # 2 of 3 needed: 1 holds, 1 open
