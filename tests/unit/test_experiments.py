"""The notebooks' experiment helpers, checked against hand computations on small inputs."""

import numpy as np
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
    from nrnlib.plots import drop_ratio_figure

    ratios = drop_ratio_figure(summary, "drops")  # a column named "drop" must not shadow DataFrame.drop
    by_panel = {trace.name: dict(zip(trace.x, trace.y, strict=True)) for trace in ratios.data}
    assert by_panel["global/all, random total"]["strong"] == pytest.approx(np.mean(own) / 0.3)
    assert sum(len(trace.y) for trace in ratios.data) == len(summary) // 2  # one ratio per (task, panel)
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


@pytest.mark.one_model
def test_deactivation_tables_with_two_workers_equal_one_process(tiny_model, tmp_path, monkeypatch):
    """Table 1, the specificity matrix, the k curve and the mode check give the same rows when their
    conditions are shared over two forked processes as in one (each a fresh cache); both processes
    scored some conditions, and a condition listed twice (the intact model) is scored once."""
    import json
    import os

    L, D = tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp
    sets = {"word_polarity": NeuronSet.from_indices(L, D, {0: range(0, D, 3)}, name="word_polarity"),
            "antonym": NeuronSet.from_indices(L, D, {L - 1: range(1, D, 4)}, name="antonym")}
    tables = {}
    for workers in (1, 2):
        monkeypatch.setenv("NRN_CACHE", str(tmp_path / f"cache{workers}"))
        tables[workers] = {
            "grid": E.table1_grid(tiny_model, {"global/all": sets}, n=4, random_seeds=(0, 1), batch_size=4,
                                  workers=workers),
            "matrix": E.specificity_matrix(tiny_model, sets, n=4, selection="plain", batch_size=4, workers=workers),
            "curve": E.k_curve_table(tiny_model, {0.1: {"plain": sets}}, n=4, batch_size=4, workers=workers),
            "modes": E.mode_agreement(tiny_model, sets, n=4, batch_size=4, workers=workers)}
    for name in tables[1]:
        pd.testing.assert_frame_equal(tables[1][name].drop(columns="per_example", errors="ignore"),
                                      tables[2][name].drop(columns="per_example", errors="ignore"))
        if "per_example" in tables[1][name]:
            assert tables[1][name].per_example.tolist() == tables[2][name].per_example.tolist()
    entries = [json.loads(p.read_text()) for p in (tmp_path / "cache2" / "deactivation").glob("*.json")]
    pids = {e["provenance"]["pid"] for e in entries}
    assert len(pids) >= 2 and os.getpid() in pids
    assert len(tables[1]["grid"]) == 2 * (1 + 1 + 2 * 2)

    from nrnlib.experiments import deactivation as D
    from nrnlib.tasks import get_task

    calls = []
    real = D.score_condition
    monkeypatch.setattr(D, "score_condition", lambda *args: calls.append(args[1:4]) or real(*args))
    task = get_task("word_polarity")
    again = D.score_conditions(tiny_model, [D.Condition(task), D.Condition(task, sets["antonym"]), D.Condition(task)],
                               n=4, batch_size=4, workers=1, progress=False)
    assert len(calls) == 2 and again[0] == again[2] and again[0] != again[1]


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


def test_check_unseen_refuses_shared_labels_and_training_tasks():
    """headline_topic answers with news_topic's labels; a role-"train" task may be in E; the profiles'
    seen / unseen tasks pass."""
    from nrnlib.profiles import get_profile
    from nrnlib.tasks import get_task

    E.check_unseen(["news_topic", "tweet_sentiment"], ["question_topic", "antonym"])
    with pytest.raises(ValueError, match="shares labels"):
        E.check_unseen(["news_topic"], ["headline_topic"])
    with pytest.raises(ValueError, match="role 'train'"):
        E.check_unseen(["news_topic"], ["word_polarity"])
    with pytest.raises(ValueError, match="both seen and unseen"):
        E.check_unseen(["antonym"], ["antonym"])
    with pytest.raises(ValueError, match="at least one seen"):
        E.check_unseen([], ["antonym"])
    for name in ("smoke", "standard", "full"):
        seen, unseen = E.lbl_tasks(get_profile(name))
        assert set(unseen) <= set(E.UNSEEN) and all(get_task(t).role == "train" for t in seen)
    assert E.lbl_tasks(get_profile("standard")) == (
        ["tweet_sentiment", "news_topic", "word_polarity", "trivia_qa", "headline_generation", "reverse_dictionary"],
        list(E.UNSEEN))
    assert E.lbl_lora(get_profile("full")).lr == 5e-5 and E.lbl_n_read(get_profile("full")) == 500


def test_mossa_states_ceiling_and_cross_on_a_subset(tiny_model, tmp_path, monkeypatch):
    """A ceiling for one task only; cross-task reads among two of three tasks; seen = the tasks E was
    trained on (here a held-out task), whatever their role."""
    from dataclasses import replace

    from nrnlib.profiles import get_profile

    monkeypatch.setenv("NRN_CACHE", str(tmp_path))
    profile = replace(get_profile("smoke"), n_eval=4, finetune_steps=1, finetune_batch_size=2, n_train=2)
    tasks = ["word_polarity", "antonym", "hypernym"]
    states = E.mossa_states(tiny_model, profile, tasks, ["antonym"], lr=1e-2, ceiling=["hypernym"],
                            cross=["hypernym", "word_polarity"])
    assert set(states["ceiling"]) == {"hypernym"} and states["train_tasks"] == ["antonym"]
    assert {u: set(r) for u, r in states["cross"].items()} == {"word_polarity": {"hypernym"},
                                                               "hypernym": {"word_polarity"}}
    assert set(states["losses"]) == {"E", "control:word_polarity", "control:antonym", "control:hypernym",
                                     "ceiling:hypernym"}
    curves = E.cka_curves(states, kinds=("linear",))
    assert curves.groupby("task").seen.first().to_dict() == {"antonym": True, "hypernym": False,
                                                             "word_polarity": False}
    cross = curves[curves.model == "cross"]
    assert set(zip(cross.task, cross.other, strict=True)) == {("word_polarity", "hypernym"),
                                                              ("hypernym", "word_polarity")}
    with pytest.raises(ValueError, match="not among the tasks read"):
        E.mossa_states(tiny_model, profile, tasks, ["antonym"], cross=["definition"])
    with pytest.raises(ValueError, match="list of task names"):
        E.mossa_states(tiny_model, profile, tasks, ["antonym"], ceiling="antonym")


def test_lbl_plan_counts_the_tokens_the_trainer_and_the_reader_run(tiny_model, monkeypatch):
    """The plan's steps and padded tokens equal what train_lora and last_token_states actually run
    (recorded from the batches they pass to the model), and seconds follow the cost formula."""
    from dataclasses import replace

    from nrnlib import losses
    from nrnlib.lora import LoraSettings, lora_target_names, train_lora
    from nrnlib.model_state import restored_after
    from nrnlib.profiles import get_profile
    from nrnlib.representations import last_token_states
    from nrnlib.tasks import get_task

    if not lora_target_names(tiny_model):
        pytest.skip("LoRA targets q_proj / v_proj (Llama); GPT-2 fuses them")
    profile = replace(get_profile("smoke"), batch_size=3)
    lora = LoraSettings(lr=1e-3, epochs=2, batch_size=3)
    tasks = ["word_polarity", "antonym"]
    cost = {"step_s": 2.0, "train_token_s": 0.01, "read_token_s": 0.001}
    plan = E.lbl_plan(tiny_model, profile, tasks, tasks, lora, ceiling=["antonym"], cross=tasks, n_train=5,
                      n_read=5, cost=cost).set_index("model")
    trained, read = [], []
    answer_loss, final_hidden = losses.answer_loss, losses.final_hidden
    monkeypatch.setattr(losses, "answer_loss",
                        lambda m, b, *a, **k: trained.append(b.input_ids.numel()) or answer_loss(m, b, *a, **k))
    monkeypatch.setattr(losses, "final_hidden",
                        lambda m, b, *a, **k: read.append(b.input_ids.numel()) or final_hidden(m, b, *a, **k))
    for name, run_tasks, seed in (("E", tasks, 0), ("ceiling:antonym", ["antonym"], 1)):
        trained.clear()
        with restored_after(tiny_model):
            train_lora(tiny_model, [get_task(t) for t in run_tasks], lora, seed=seed, n_train=5, progress=False)
        assert plan.loc[name, "steps"] == len(trained) == lora.total_steps(5 * len(run_tasks))
        assert plan.loc[name, "train_tokens"] == sum(trained)
    for t in tasks:
        read.clear()
        last_token_states(tiny_model, get_task(t), n=5, batch_size=3, progress=False)
        assert plan.loc[f"control:{t}", "read_tokens"] >= sum(read) > 0
    assert plan.loc["ceiling:antonym", "read_tokens"] == sum(read)
    assert plan.loc["base", "read_tokens"] == plan.loc["E", "read_tokens"] == plan.loc["control:antonym", "read_tokens"]
    row = plan.loc["E"]
    assert row.seconds == pytest.approx(row.steps * 2.0 + row.train_tokens * 0.01 + row.read_tokens * 0.001)
    with pytest.raises(ValueError, match="step_s"):
        E.lbl_plan(tiny_model, profile, tasks, tasks, lora, n_train=5, n_read=5, cost={"step_s": 1.0})


def test_loss_summary_by_hand():
    """10 steps falling 4, 3, then flat at 1: first fifth (2 steps) 3.5, last fifth 1, fall 2.5, and
    the last half is flat."""
    summary = E.loss_summary({"E": torch.tensor([4.0, 3.0] + [1.0] * 8), "c": torch.tensor([2.0, 1.0])})
    row = summary.set_index("model").loc["E"]
    assert (row.steps, row.loss_first, row.loss_last, row.fall) == (10, 3.5, 1.0, 2.5)
    assert row.last_half_change == pytest.approx(0.0, abs=1e-12)
    short = summary.set_index("model").loc["c"]
    assert short.loss_first == 2.0 and short.loss_last == 1.0 and np.isnan(short.last_half_change)
    table = E.loss_table({"E": torch.tensor([2.0, 1.0])})
    assert table.to_dict(orient="list") == {"model": ["E", "E"], "step": [1, 2], "loss": [2.0, 1.0]}
    ramp = E.loss_summary({"r": torch.arange(8.0)}).iloc[0]
    assert ramp.last_half_change == pytest.approx(4.0)  # slope 1 per step over the last 4 steps
    assert not ramp.still_falling  # rising, not falling


def test_still_falling_rule_by_hand():
    """The last half's change (slope x steps) with a t CI from the slope's standard error, computed here
    with numpy; a noisy but steady fall of 2.5 nats is still falling, a noisy flat tail is not."""
    from scipy import stats

    noise = np.array([0.3, -0.3] * 10)
    falling = 10 - 0.25 * np.arange(20) + noise
    flat = 2 + noise
    summary = E.loss_summary({"falling": torch.tensor(falling), "flat": torch.tensor(flat)}).set_index("model")
    tail = falling[10:]
    x = np.arange(10.0)
    slope, intercept = np.polyfit(x, tail, 1)
    se = np.sqrt(((tail - (slope * x + intercept)) ** 2).sum() / 8 / ((x - x.mean()) ** 2).sum())
    half = stats.t.ppf(0.975, 8) * se
    row = summary.loc["falling"]
    assert row.last_half_change == pytest.approx(slope * 10)
    assert (row.change_ci_low, row.change_ci_high) == pytest.approx(((slope - half) * 10, (slope + half) * 10))
    assert row.change_ci_high < 0 and row.still_falling
    flat_row = summary.loc["flat"]
    assert not flat_row.still_falling and flat_row.change_ci_low < 0 < flat_row.change_ci_high


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


@pytest.mark.one_model
def test_table2_with_two_workers_equals_one_process(tiny_model, parity_task, tmp_path, monkeypatch):
    """Table 2's runs shared over two forked processes give the same rows, lr choices and loss curves
    as one process (each a fresh cache), and both processes trained some of them."""
    import json
    import os

    from nrnlib.experiments import neuron_finetuning

    monkeypatch.setattr(neuron_finetuning, "get_task", lambda name: parity_task)
    L, D = tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp
    own = NeuronSet.from_indices(L, D, {0: range(6), L - 1: range(3)})
    tables = {}
    for workers in (1, 2):
        monkeypatch.setenv("NRN_CACHE", str(tmp_path / f"cache{workers}"))
        tables[workers] = E.table2(tiny_model, {"global/all": {"parity": own}}, _tiny_protocol(), seeds=(0, 1, 2),
                                   n_test=6, progress=False, workers=workers)
    one, two = tables[1], tables[2]
    assert one.lr == two.lr
    pd.testing.assert_frame_equal(one.rows.drop(columns=["per_example", "train_wall_s"]),
                                  two.rows.drop(columns=["per_example", "train_wall_s"]))
    assert one.rows.per_example.tolist() == two.rows.per_example.tolist()
    assert [r["curve"]["train_loss"] for r in one.runs] == [r["curve"]["train_loss"] for r in two.runs]
    entries = (tmp_path / "cache2" / "protocol_arm").glob("*.json")
    pids = {json.loads(p.read_text())["provenance"]["pid"] for p in entries}
    assert os.getpid() in pids and len(pids) >= 2


def test_table2_answers_train_the_tables_arms(tiny_model, echo_task, tmp_path, monkeypatch):
    """table2_answers' columns are the answers after training, by hand, the own set, its random draw
    (random_like(seed, match)) and every parameter at the lrs Table 2 chose, at the given seed."""
    from nrnlib.experiments import neuron_finetuning
    from nrnlib.model_state import restored_after
    from nrnlib.protocol import train_to_convergence

    monkeypatch.setenv("NRN_CACHE", str(tmp_path))
    monkeypatch.setattr(neuron_finetuning, "get_task", lambda name: echo_task)
    L, D = tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp
    own = NeuronSet.from_indices(L, D, {0: range(6), L - 1: range(3)})
    sets = {"global/all": {"echo": own}}
    protocol = _tiny_protocol()
    table = E.table2(tiny_model, sets, protocol, seeds=(0, 1), n_test=3, progress=False)
    answers = E.table2_answers(tiny_model, sets, table, echo_task, protocol, seed=1, n=3)
    assert list(answers.columns) == ["input", "gold", "untrained", "task neurons", "random neurons", "all parameters"]
    lr = table.lr["echo"]
    for column, neurons, chosen in (("task neurons", own, lr["neurons"]["lr"]),
                                    ("random neurons", own.random_like(1, match="total"), lr["neurons"]["lr"]),
                                    ("all parameters", None, lr["all"]["lr"])):
        with restored_after(tiny_model):
            train_to_convergence(tiny_model, [echo_task], protocol, lr=chosen, seed=1, neurons=neurons)
            assert list(answers[column]) == evaluate(tiny_model, echo_task, n=3, progress=False).predictions


def test_table2_resumes_after_an_interruption_without_recomputing(tiny_model, parity_task, tmp_path, monkeypatch):
    """Kill the run after three arms; the rerun computes only the arms that had not finished, and gives
    the same rows as an uninterrupted run in a fresh cache (one process, whose calls the test counts)."""
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
        E.table2(tiny_model, sets, protocol, seeds=(0, 1), n_test=4, progress=False, workers=1)
    counting.fail, done = False, len(calls) - 1
    resumed = E.table2(tiny_model, sets, protocol, seeds=(0, 1), n_test=4, progress=False, workers=1).rows
    assert len(calls) - done - 1 == 7 - done  # 7 arms in all; the finished ones came from the cache
    monkeypatch.setenv("NRN_CACHE", str(tmp_path / "b"))
    fresh = E.table2(tiny_model, sets, protocol, seeds=(0, 1), n_test=4, progress=False, workers=1).rows
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
    from nrnlib.experiments.verdicts import finetuning_seed_points
    from nrnlib.plots import claims_forest_figure

    points = finetuning_seed_points(rows)  # each seed's mean over examples, in the claims' rows and panels
    up = points[(points.row == "up") & points.facet.str.startswith("log-prob")].sort_values("seed_index")
    assert up.estimate.tolist() == pytest.approx([0.9, 0.6])
    assert set(points.facet) == {c.scope.split("; ", 1)[1] for c in claims if c.id.endswith("per_task")}
    fig = claims_forest_figure([c for c in claims if c.id.endswith("per_task")], "t", facet="metric", points=points)
    assert sum(len(t.x) for t in fig.data if t.name == "one seed") == len(points) == 8
