"""The notebooks' experiment helpers, checked against hand computations on small inputs."""

import pandas as pd
import pytest
import torch

from nrnlib import experiments as E
from nrnlib.evaluate import evaluate
from nrnlib.neurons import NeuronSet


def _set(mask_rows, name=""):
    return NeuronSet(torch.tensor(mask_rows, dtype=torch.bool), name=name)


def test_mean_off_diagonal_by_hand():
    m = pd.DataFrame([[1.0, 0.2, 0.4], [0.2, 1.0, 0.6], [0.4, 0.6, 1.0]])
    assert E.mean_off_diagonal(m) == pytest.approx((0.2 + 0.4 + 0.2 + 0.6 + 0.4 + 0.6) / 6)
    with pytest.raises(ValueError, match="square"):
        E.mean_off_diagonal(pd.DataFrame([[1.0, 2.0]]))


def test_iou_and_depth_tables_by_hand():
    a = _set([[1, 1, 0, 0], [0, 0, 0, 0]], "a")
    b = _set([[0, 1, 1, 0], [0, 0, 0, 1]], "b")
    iou = E.iou_table({"a": a, "b": b})
    assert iou.loc["a", "a"] == 1.0 and iou.loc["a", "b"] == pytest.approx(1 / 4) == iou.loc["b", "a"]
    depth = E.depth_table({"b": b}, "plain").set_index("layer")
    assert depth.loc[0, "count"] == 2 and depth.loc[1, "fraction_of_layer"] == 0.25
    assert depth.share_of_set.sum() == pytest.approx(1.0) and depth.loc[1, "depth"] == 1.0


def test_neuron_sets_plain_and_specific():
    shared = torch.zeros(2, 5)
    shared[0, 0] = 100.0  # relevant to both tasks: plain picks it, specific does not
    s1, s2 = shared.clone(), shared.clone()
    s1[1, 2], s2[1, 3] = 50.0, 50.0
    s1 += 0.01
    s2 += 0.01
    plain = E.neuron_sets({"t1": s1, "t2": s2}, k=0.1, selection="plain")
    specific = E.neuron_sets({"t1": s1, "t2": s2}, k=0.1, selection="specific")
    assert plain["t1"].mask[0, 0] and plain["t2"].mask[0, 0]
    assert specific["t1"].mask[1, 2] and specific["t2"].mask[1, 3] and not specific["t1"].mask[0, 0]
    with pytest.raises(ValueError, match="selection"):
        E.neuron_sets({"t1": s1, "t2": s2}, selection="entropy")


def test_stability_uses_disjoint_halves():
    """Half A = chunks [0, m), half B = chunks [C/2, C/2 + m): identical halves give IoU 1, halves
    that favour different neurons give IoU 0."""
    agree = torch.zeros(4, 1, 10)
    agree[:, 0, 3] = 1.0
    differ = torch.zeros(4, 1, 10)
    differ[:2, 0, 1] = 1.0
    differ[2:, 0, 7] = 1.0
    table = E.stability_table({"agree": agree, "differ": differ}, k=0.1, selections=("plain",))
    assert sorted(table.chunks_per_half.unique()) == [1, 2]
    assert (table[table.task == "agree"].iou == 1.0).all() and (table[table.task == "differ"].iou == 0.0).all()


def test_score_condition_equals_a_hand_loop(tiny_model, parity_task, tmp_path, monkeypatch):
    """Deactivating a set via the experiment equals evaluating under a hand-written hook that zeroes
    the same neurons, and the cached rerun returns the same numbers."""
    monkeypatch.setenv("NRN_CACHE", str(tmp_path))
    L, D = tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp
    neurons = NeuronSet.from_indices(L, D, {0: range(0, D, 2), L - 1: [1, 5]})

    def zero(layer):
        def hook(x, hook=None):
            x = x.clone()
            x[..., neurons.indices(layer)] = 0
            return x
        return hook

    with tiny_model.hooks(fwd_hooks=[(f"blocks.{lay}.mlp.hook_post", zero(lay)) for lay in neurons.layers()]):
        expected = evaluate(tiny_model, parity_task, n=6, decode=False, progress=False).metrics
    got = E.score_condition(tiny_model, parity_task, neurons, n=6)
    again = E.score_condition(tiny_model, parity_task, neurons, n=6)
    intact = E.score_condition(tiny_model, parity_task, None, n=6)
    assert got["label_logprob"] == pytest.approx(expected["label_logprob"], abs=1e-6)
    assert got == again and intact["label_logprob"] != pytest.approx(got["label_logprob"], abs=1e-6)


def _grid_rows(task, base, own, randoms, cell="global/all", control="total"):
    """Rows shaped like ``table1_grid``'s for one task: per-example log-probs given by hand."""
    common = {"task": task, "category": "generation", "role": "train"}
    rows = [{**common, "condition": "none", "cell": "-", "control": "-", "seed": None,
             "per_example": {"logprob": base}}]
    rows.append({**common, "condition": "task", "cell": cell, "control": "-", "seed": None,
                 "per_example": {"logprob": own}})
    rows += [{**common, "condition": "random", "cell": cell, "control": control, "seed": s,
              "per_example": {"logprob": r}} for s, r in enumerate(randoms)]
    return rows


def test_drops_per_example_and_deactivation_claims_by_hand():
    import numpy as np

    from nrnlib.experiments.verdicts import deactivation_claims

    base = [-1.0, -2.0, -1.5, -1.0, -2.5, -1.2]
    strong = _grid_rows("strong", base, [b - 4.0 - 0.1 * i for i, b in enumerate(base)],
                        [[b - 0.2 for b in base], [b - 0.4 for b in base], [b - 0.3 for b in base]])
    weak = _grid_rows("weak", base, [b - 0.5 for b in base], [[b - 0.4 for b in base], [b - 0.6 for b in base]])
    other_cell = _grid_rows("strong", base, [b - 1.0 for b in base], [[b - 0.1 for b in base]] * 2,
                            cell="layer/answer", control="layer")[1:]
    table = pd.DataFrame(strong + weak + other_cell)
    own, rnd = E.drops_per_example(table, "strong", "global/all", "total")
    np.testing.assert_allclose(own, [4.0 + 0.1 * i for i in range(6)])
    np.testing.assert_allclose(rnd, [[0.2] * 6, [0.4] * 6, [0.3] * 6])
    with pytest.raises(ValueError, match="no own set"):
        E.drops_per_example(table, "weak", "layer/answer", "layer")
    summary = E.drop_summary(table[table.task == "strong"])
    own_row = summary[(summary.cell == "global/all") & (summary.condition == "task neurons off")].iloc[0]
    assert own_row["drop"] == pytest.approx(np.mean(own)) and own_row.ci_low <= own_row["drop"] <= own_row.ci_high
    from nrnlib.plots import drop_bars_figure

    bars = drop_bars_figure(summary, "drops")  # a column named "drop" must not shadow DataFrame.drop
    assert sum(len(trace.y) for trace in bars.data) == len(summary)
    claims = deactivation_claims(table[table.task == "strong"], "smoke")
    by_scope = {(c.id, c.scope): c for c in claims}
    paper = by_scope[("A.deactivation.ratio.per_task", "strong; global/all, random total")]
    assert paper.estimate == pytest.approx(np.mean(own) - 3 * 0.3) and paper.verdict == "holds"
    assert paper.ci_low <= paper.estimate <= paper.ci_high
    assert {c.id for c in claims if not c.id.endswith("per_task")} == {"A.deactivation.ratio",
                                                                       "A.deactivation.ratio.grid"}
    weak_claim = [c for c in deactivation_claims(table[table.task == "weak"], "smoke") if c.id.endswith("per_task")]
    # own drop 0.5 against 3 x 0.5: the CI lies wholly below 0 (no spread between examples)
    assert weak_claim[0].estimate == pytest.approx(0.5 - 3 * 0.5) and weak_claim[0].verdict == "does not hold"


def test_specificity_claims_pick_the_most_harmful_rival():
    from nrnlib.experiments.verdicts import specificity_claims

    def row(task, whose, lp, drop):
        return {"task": task, "whose": whose, "logprob_drop": drop, "per_example": {"logprob": lp}}

    matrix = pd.DataFrame([
        row("a", "a", [-5.0, -6.0, -5.5], 4.0), row("a", "b", [-2.0, -2.5, -2.0], 1.0),
        row("a", "c", [-3.0, -3.5, -3.0], 2.0),
        row("b", "b", [-1.0, -1.2, -1.1], 0.1), row("b", "a", [-4.0, -4.1, -4.2], 3.0),
        row("b", "c", [-1.0, -1.0, -1.0], 0.0)])
    claims = {c.scope: c for c in specificity_claims(matrix, "smoke") if c.id.endswith("per_task")}
    assert claims["a"].estimate == pytest.approx(((-3.0 + 5.0) + (-3.5 + 6.0) + (-3.0 + 5.5)) / 3)
    assert "drop(c)" in claims["a"].statistic and claims["a"].verdict == "holds"
    assert "drop(a)" in claims["b"].statistic and claims["b"].verdict == "does not hold"


def test_table1_grid_rows_are_the_named_sets(tiny_model, tmp_path, monkeypatch):
    """Every row of the grid equals ``score_condition`` on the set it names: the cell's own set, or
    its ``random_like(seed, match=control)``; one intact row per task."""
    from nrnlib.tasks import get_task

    monkeypatch.setenv("NRN_CACHE", str(tmp_path))
    L, D = tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp
    sets = {"global/all": {"word_polarity": NeuronSet.from_indices(L, D, {0: range(0, D, 3)}, name="word_polarity")},
            "layer/all": {"word_polarity": NeuronSet.from_indices(L, D, {i: [1, 2] for i in range(L)})}}
    table = E.table1_grid(tiny_model, sets, n=4, random_seeds=(0, 1), batch_size=4)
    assert len(table) == 1 + 2 * (1 + 2 * 2) and (table.condition == "none").sum() == 1
    task = get_task("word_polarity")
    row = table[(table.cell == "global/all") & (table.control == "total") & (table.seed == 1)].iloc[0]
    expected = E.score_condition(tiny_model, task, sets["global/all"]["word_polarity"].random_like(1, match="total"), 4,
                                 batch_size=4)
    assert row.per_example["logprob"] == expected["per_example"]["logprob"]
    layer_row = table[(table.cell == "layer/all") & (table.control == "layer") & (table.seed == 0)].iloc[0]
    expected = E.score_condition(tiny_model, task, sets["layer/all"]["word_polarity"].random_like(0), 4, batch_size=4)
    assert layer_row.logprob == expected["label_logprob"]
    with pytest.raises(ValueError, match="controls must be among"):
        E.table1_grid(tiny_model, sets, n=4, controls=("uniform",))


def test_diagonal_dominance():
    drops = pd.DataFrame([[2.0, 0.1], [0.5, 0.05]], index=["a", "b"], columns=["a", "b"])
    dom = E.diagonal_dominance(drops).set_index("task")
    assert dom.loc["a", "own_is_max"] and not dom.loc["b", "own_is_max"]
    assert dom.loc["b", "most_harmful_other"] == "a"


def test_layer_ranges_on_synthetic_curves():
    """b(l) ≥ τ on blocks 0-2, e(l) ≥ τ on blocks 3-4, neither afterwards: shared [0,3), transition
    [3,5), refinement [5,8); with e = b the transition is empty."""
    b = [1.0, 0.99, 0.97, 0.9, 0.8, 0.7, 0.6, 0.5]
    e = [1.0, 0.99, 0.98, 0.97, 0.96, 0.8, 0.7, 0.6]

    def curves(b, e):
        rows = [{"model": "base", "layer": 0, "estimator": "linear", "cka": float("nan")},
                {"model": "E", "layer": 0, "estimator": "linear", "cka": float("nan")}]
        for name, values in (("base", b), ("E", e)):
            rows += [{"model": name, "layer": i + 1, "estimator": "linear", "cka": v} for i, v in enumerate(values)]
        return pd.DataFrame(rows)

    assert E.layer_ranges(curves(b, e), tau=0.95) == {"shared": (0, 3), "transition": (3, 5), "refinement": (5, 8)}
    assert E.layer_ranges(curves(b, b), tau=0.95)["transition"] == (3, 3)
    assert E.ranges_as_depth({"shared": (0, 3), "transition": (3, 3)}, 8) == {"shared": "1-3 (0.12-0.38)",
                                                                              "transition": "none"}
    assert E.paper_b_ranges(32) == {"shared": (0, 9), "transition": (9, 15), "refinement": (15, 32)}


def test_mossa_states_base_is_the_untouched_model(tiny_model, tmp_path, monkeypatch):
    """Base states equal last_token_states of the loaded model, E and the controls differ from them,
    and the model's weights are unchanged afterwards."""
    from dataclasses import replace

    from nrnlib.profiles import get_profile
    from nrnlib.representations import last_token_states
    from nrnlib.tasks import get_task

    monkeypatch.setenv("NRN_CACHE", str(tmp_path))
    profile = replace(get_profile("smoke"), n_eval=4, finetune_steps=2, finetune_batch_size=2, n_train=4)
    before = [p.detach().clone() for p in tiny_model.parameters()]
    states = E.mossa_states(tiny_model, profile, ["word_polarity", "antonym"], ["word_polarity"], lr=1e-2)
    assert all(torch.equal(p, b) for p, b in zip(tiny_model.parameters(), before, strict=True))
    direct = last_token_states(tiny_model, get_task("antonym"), n=4, progress=False)
    torch.testing.assert_close(states["base"]["antonym"], direct)
    assert not torch.allclose(states["E"]["antonym"][-1], direct[-1])
    assert not torch.allclose(states["control"]["antonym"][-1], direct[-1])
    curves = E.cka_curves(states, kinds=("linear",))
    assert set(curves.model) == {"E", "base"} and curves.groupby("task").seen.first().to_dict() == {
        "antonym": False, "word_polarity": True}


def test_cka_gap_by_hand():
    rows = [{"task": t, "seen": seen, "model": m, "estimator": "linear", "layer": layer, "cka": v}
            for t, seen, m, layer, v in [("a", True, "E", 1, 0.9), ("a", True, "base", 1, 0.7),
                                         ("b", True, "E", 1, 0.5), ("b", True, "base", 1, 0.9),
                                         ("c", False, "E", 1, 0.8), ("c", False, "base", 1, 0.6),
                                         ("a", True, "E", 0, float("nan")), ("a", True, "base", 0, float("nan"))]]
    gap = E.cka_gap(pd.DataFrame(rows)).set_index("tasks").gap
    assert gap["seen"] == pytest.approx((0.9 + 0.5) / 2 - (0.7 + 0.9) / 2) and gap["unseen"] == pytest.approx(0.2)


def _tiny_protocol(**overrides):
    from nrnlib.protocol import Protocol

    values = dict(dev_size=2, eval_every=1, patience=1, max_steps=2, batch_size=2, n_train=4, dev_batch_size=2,
                  lr_grids={"neurons": (1e-2, 3e-2), "all": (1e-3,)})
    return Protocol(**{**values, **overrides})


def test_table2_rows_equal_hand_runs_and_share_one_lr(tiny_model, parity_task, tmp_path, monkeypatch):
    """Every trained row equals a hand run of ``train_to_convergence`` + ``evaluate`` on the set its
    arm names (the random arm: the own set's ``random_like(seed, match)``), both neuron arms of a task
    share the lr with the lowest mean best dev loss over them, and the model is unchanged afterwards."""
    from nrnlib.experiments import neuron_finetuning
    from nrnlib.model_state import restored_after
    from nrnlib.protocol import train_to_convergence

    monkeypatch.setenv("NRN_CACHE", str(tmp_path))
    monkeypatch.setattr(neuron_finetuning, "get_task", lambda name: parity_task)
    L, D = tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp
    own = NeuronSet.from_indices(L, D, {0: range(6), L - 1: range(3)})
    protocol = _tiny_protocol()
    before = [p.detach().clone() for p in tiny_model.parameters()]
    out = E.table2(tiny_model, {"global/all": {"parity": own}}, protocol, seeds=(0, 1), n_test=6, progress=False)
    assert all(torch.equal(p, b) for p, b in zip(tiny_model.parameters(), before, strict=True))
    rows = out.rows
    assert sorted(rows.arm) == sorted(["none", "task", "task", "random", "random", "all"])
    assert len(out.runs) == 2 * 2 + 2 + 1  # lr grid x (task, random) at seed 0, both at seed 1, "all" once
    by_lr = {}
    for r in out.runs[:4]:
        by_lr.setdefault(r["lr"], []).append(r["curve"]["best_dev_loss"])
    chosen = min(by_lr, key=lambda v: sum(by_lr[v]) / 2)
    assert out.lr["parity"]["neurons"]["lr"] == chosen and set(rows[rows.arm != "none"].lr.dropna()) >= {chosen}
    row = rows[(rows.arm == "random") & (rows.seed == 1)].iloc[0]
    with restored_after(tiny_model):
        train_to_convergence(tiny_model, [parity_task], protocol, lr=chosen, seed=1,
                             neurons=own.random_like(1, match="total"))
        expected = evaluate(tiny_model, parity_task, n=6, decode=False, progress=False)
    assert row.logprob == pytest.approx(expected.metrics["label_logprob"], rel=1e-5)
    assert row.per_example["calibrated"] == pytest.approx(expected.per_example["calibrated_correct"])
    none = rows[rows.arm == "none"].iloc[0]
    intact = evaluate(tiny_model, parity_task, n=6, decode=False, progress=False)
    assert none.logprob == pytest.approx(intact.metrics["label_logprob"], rel=1e-5) != row.logprob
    with pytest.raises(ValueError, match="controls"):
        E.table2(tiny_model, {"global/all": {"parity": own}}, protocol, controls=("bogus",))


def test_table2_resumes_after_an_interruption_without_recomputing(tiny_model, parity_task, tmp_path, monkeypatch):
    """Kill the run after three arms; the rerun computes only the arms that had not finished, and gives
    the same rows as an uninterrupted run in a fresh cache."""
    from nrnlib import protocol as protocol_module
    from nrnlib.experiments import neuron_finetuning

    monkeypatch.setattr(neuron_finetuning, "get_task", lambda name: parity_task)
    L, D = tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp
    sets = {"global/all": {"parity": NeuronSet.from_indices(L, D, {0: range(6)})}}
    protocol = _tiny_protocol()
    real, calls = protocol_module.train_to_convergence, []

    def counting(*args, **kwargs):
        calls.append(kwargs["lr"])
        if len(calls) == 4 and counting.fail:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(protocol_module, "train_to_convergence", counting)
    monkeypatch.setenv("NRN_CACHE", str(tmp_path / "a"))
    counting.fail = True
    with pytest.raises(KeyboardInterrupt):
        E.table2(tiny_model, sets, protocol, seeds=(0, 1), n_test=4, progress=False)
    counting.fail, done = False, len(calls) - 1
    resumed = E.table2(tiny_model, sets, protocol, seeds=(0, 1), n_test=4, progress=False).rows
    assert len(calls) - done - 1 == 7 - done  # 7 arms in all; the finished ones came from the cache
    monkeypatch.setenv("NRN_CACHE", str(tmp_path / "b"))
    fresh = E.table2(tiny_model, sets, protocol, seeds=(0, 1), n_test=4, progress=False).rows
    pd.testing.assert_frame_equal(resumed.drop(columns=["train_wall_s"]), fresh.drop(columns=["train_wall_s"]))


def test_finetuning_claims_by_hand():
    """The per-task statistic is the mean of the paired [seed, example] differences; the tally counts
    the tasks whose CI lies above 0."""
    import numpy as np

    from nrnlib.experiments.verdicts import finetuning_claims

    def row(task, arm, seed, lp, control="-"):
        cat = "classification"
        return {"task": task, "category": cat, "arm": arm, "cell": "global/all", "control": control, "seed": seed,
                "per_example": {"logprob": lp, "calibrated": [1.0 if v > -1.5 else 0.0 for v in lp]}}

    base = [-1.0, -2.0, -1.4, -3.0, -1.2]
    rows = pd.DataFrame([
        row("up", "task", 0, [b + 1.0 for b in base]), row("up", "task", 1, [b + 0.8 for b in base]),
        row("up", "random", 0, [b + 0.1 for b in base], "total"),
        row("up", "random", 1, [b + 0.2 for b in base], "total"),
        row("flat", "task", 0, base), row("flat", "task", 1, [b - 0.1 for b in base]),
        row("flat", "random", 0, [b + 0.05 for b in base], "total"),
        row("flat", "random", 1, [b - 0.05 for b in base], "total")])
    claims = finetuning_claims(rows, "smoke")
    lp = {c.scope.split(";")[0]: c for c in claims if c.id.endswith("per_task") and "log-prob" in c.scope}
    assert lp["up"].estimate == pytest.approx(np.mean([0.9, 0.6])) and lp["up"].verdict == "holds"
    assert lp["flat"].estimate == pytest.approx(np.mean([-0.05, -0.05])) and lp["flat"].verdict == "does not hold"
    tallies = [c for c in claims if c.id == "A.finetune.task_vs_random"]
    assert len(tallies) == 2 and tallies[0].estimate == 1 and tallies[0].verdict == "does not hold"
