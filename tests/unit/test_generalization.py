"""Notebook 04 (Paper A Figure 2): the sets, the overlap, the sweep against hand runs, the verdicts by hand."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from nrnlib.evaluate import evaluate
from nrnlib.experiments import generalization as G
from nrnlib.neurons import NeuronSet


def _scores(values):
    return torch.tensor(values, dtype=torch.float32)


def test_proportion_sets_union_and_overlap_by_hand(monkeypatch):
    """Top-p of a 1 x 10 score row, the union of two training tasks, and IoU with a test task's set."""
    from types import SimpleNamespace

    tasks = {"x1": SimpleNamespace(category="classification"), "x2": SimpleNamespace(category="classification"),
             "y": SimpleNamespace(category="classification"), "g": SimpleNamespace(category="generation")}
    monkeypatch.setattr(G, "get_task", tasks.__getitem__)
    scores = {"x1": _scores([list(range(10, 0, -1))]), "x2": _scores([list(range(10))]),
              "y": _scores([[0, 9, 8, 0, 0, 0, 0, 0, 0, 7]]), "g": _scores([[0] * 9 + [1]])}
    sets = G.proportion_sets(scores, 0.2)
    assert sets["x1"].indices(0).tolist() == [0, 1] and sets["x2"].indices(0).tolist() == [8, 9]
    union = G.training_union(sets, ["x1", "x2"])
    assert union.indices(0).tolist() == [0, 1, 8, 9]
    table = G.overlap_table(scores, [0.2], {"classification": ["x1", "x2"]}, ["x1", "y", "g"]).set_index("test_task")
    assert table.loc["y", "overlap"] == pytest.approx(1 / 5)  # y = {1, 2}; union {0, 1, 8, 9}: 1 shared of 5
    assert table.loc["x1", "relation"] == G.ID and table.loc["y", "relation"] == G.OOD_SAME
    assert table.loc["g", "relation"] == G.OOD_OTHER
    assert G.proportion_sets(scores, 1.0)["y"].count == 10


def test_proportion_sweep_rows_equal_hand_runs(tiny_model, parity_task, echo_task, tmp_path, monkeypatch):
    """A joint row equals training the category's tasks jointly on the union of their top-p sets at the
    chosen lr, then scoring the test task; its gain is that score minus the untrained model's."""
    from nrnlib.model_state import restored_after
    from nrnlib.protocol import Protocol, train_to_convergence

    monkeypatch.setenv("NRN_CACHE", str(tmp_path))
    tasks = {"parity": parity_task, "echo": echo_task}
    monkeypatch.setattr(G, "get_task", tasks.__getitem__)
    L, D = tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp
    gen = torch.Generator().manual_seed(0)
    scores = {t: torch.rand(L, D, generator=gen) for t in tasks}
    protocol = Protocol(dev_size=2, eval_every=1, patience=1, max_steps=2, batch_size=2, n_train=4, dev_batch_size=2,
                        lr_grids={"neurons": (1e-2, 3e-2)})
    before = [p.detach().clone() for p in tiny_model.parameters()]
    sweep = G.proportion_sweep(tiny_model, scores, protocol, {"classification": ["parity"]}, ["parity", "echo"],
                               proportions=(0.1, 0.5), seeds=(0, 1), individual_proportions=(0.1,), n_test=4,
                               reference_p=0.1, progress=False)
    assert all(torch.equal(p, b) for p, b in zip(tiny_model.parameters(), before, strict=True))
    rows = sweep.rows
    assert len(rows[rows["mode"] == "joint"]) == 2 * 2 * 2 and len(rows[rows["mode"] == "individual"]) == 2
    assert sweep.lr["lr"] == min(sweep.lr["scores"], key=sweep.lr["scores"].get)
    row = rows[(rows["mode"] == "joint") & (rows.p == 0.5) & (rows.seed == 1) & (rows.test_task == "echo")].iloc[0]
    assert row.relation == G.OOD_OTHER
    union = G.proportion_sets(scores, 0.5)["parity"]
    with restored_after(tiny_model):
        train_to_convergence(tiny_model, [parity_task], protocol, lr=sweep.lr["lr"], seed=1, neurons=union)
        after = evaluate(tiny_model, echo_task, n=4, progress=False)
    untrained = evaluate(tiny_model, echo_task, n=4, progress=False)
    expected = np.mean(np.asarray(after.per_example["answer_logprob"]) - untrained.per_example["answer_logprob"])
    assert row.logprob_gain == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert row.overlap == pytest.approx(union.iou(G.proportion_sets(scores, 0.5)["echo"]))


def _row(mode, category, p, seed, test, relation, gain, test_category="classification", overlap=0.1):
    return {"mode": mode, "category": category, "p": p, "seed": seed, "test_task": test, "relation": relation,
            "test_category": test_category, "overlap": overlap, "logprob_gain": float(np.mean(gain)),
            "per_example_gain": {"logprob": list(gain), "decoded": [0.0] * len(gain)}}


def test_generalization_claims_by_hand():
    """ID peaks at p = 0.5 (gain 2 vs 1 at p = 1); the held-out task rises (0.1 -> 0.6); the
    generation task gains 0.1 < 0.5 nats (no transfer); the overlap tracks the OOD gain."""
    from nrnlib.experiments.verdicts import generalization_claims

    jitter = np.array([0.0, 0.1, -0.1, 0.05])
    rows = []
    for seed in (0, 1):
        for p, id_gain, ood_gain, overlap in [(0.1, 0.5, 0.1, 0.05), (0.5, 2.0, 0.3, 0.2), (1.0, 1.0, 0.6, 0.4)]:
            rows.append(_row("joint", "classification", p, seed, "a", G.ID, id_gain + jitter))
            for i, held_out in enumerate(("h", "h2", "h3")):  # 9 (p, task) points, overlap and gain rising together
                rows.append(_row("joint", "classification", p, seed, held_out, G.OOD_SAME,
                                 ood_gain + i + jitter, overlap=overlap + i))
            rows.append(_row("joint", "classification", p, seed, "g", G.OOD_OTHER, 0.1 + jitter, "generation"))
    claims = {c.id: c for c in generalization_claims(pd.DataFrame(rows), "smoke")}
    peak = claims["A.generalization.id_peak"]
    assert peak.estimate == pytest.approx(1.0) and peak.verdict == "holds" and "p* = 0.5" in peak.scope
    assert claims["A.generalization.ood_rise.per_task"].estimate == pytest.approx(0.5)
    assert claims["A.generalization.ood_rise"].estimate == 3 and claims["A.generalization.ood_rise"].verdict == "holds"
    assert claims["A.generalization.no_cls_to_gen.per_task"].verdict == "holds"
    assert claims["A.generalization.overlap_ood"].estimate == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two proportions"):
        generalization_claims(pd.DataFrame([r for r in rows if r["p"] == 0.1]), "smoke")


def test_union_of_one_set_is_itself_and_needs_a_task():
    s = NeuronSet.from_indices(1, 4, {0: [1]})
    assert G.training_union({"a": s}, ["a"]) == s
    with pytest.raises(ValueError, match="at least one"):
        G.training_union({"a": s}, [])


@pytest.mark.one_model
def test_proportion_sweep_with_two_workers_equals_one_process(tiny_model, parity_task, echo_task, tmp_path,
                                                              monkeypatch):
    """The runs shared over two forked processes give the same rows, lr choice and curves as one process
    (each its own fresh cache), and both processes computed some of them."""
    from nrnlib.protocol import Protocol

    tasks = {"parity": parity_task, "echo": echo_task}
    monkeypatch.setattr(G, "get_task", tasks.__getitem__)
    gen = torch.Generator().manual_seed(1)
    scores = {t: torch.rand(tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp, generator=gen) for t in tasks}
    protocol = Protocol(dev_size=2, eval_every=1, patience=1, max_steps=2, batch_size=2, n_train=4, dev_batch_size=2,
                        lr_grids={"neurons": (1e-2, 3e-2)})
    sweeps = {}
    for workers in (1, 2):
        monkeypatch.setenv("NRN_CACHE", str(tmp_path / f"cache{workers}"))
        sweeps[workers] = G.proportion_sweep(tiny_model, scores, protocol, {"classification": ["parity"]},
                                             ["parity", "echo"], proportions=(0.1, 1.0), seeds=(0, 1),
                                             individual_proportions=(0.1,), n_test=4, reference_p=0.1,
                                             progress=False, workers=workers)
    one, two = sweeps[1], sweeps[2]
    assert one.lr == two.lr
    drop = ["wall_s"]
    pd.testing.assert_frame_equal(one.rows.drop(columns=drop, errors="ignore"),
                                  two.rows.drop(columns=drop, errors="ignore"))
    assert [r["curve"]["train_loss"] for r in one.runs] == [r["curve"]["train_loss"] for r in two.runs]
    arms = (tmp_path / "cache2" / "protocol_arm").glob("*.json")
    pids = {json.loads(path.read_text())["provenance"]["pid"] for path in arms}
    assert os.getpid() in pids and len(pids) >= 2  # a helper per run_jobs call (lr choice, then the sweep)


def test_dev_curves_reads_the_sweep_runs_by_hand():
    """One row per dev evaluation of each run at the chosen lr, its panel and proportion from the arm name;
    a run that is not a sweep arm is refused."""

    def run(arm, lr, seed, steps, losses, best):
        return {"arm": arm, "arm_type": "neurons", "lr": lr, "seed": seed,
                "curve": {"train_loss": [9.0] * steps[-1], "dev_steps": steps, "dev_loss": losses, "best_step": best}}

    runs = [run("joint:classification:p=0.1", 1e-3, 0, [0, 10, 20], [3.0, 2.5, 2.7], 10),
            run("individual:antonym:p=0.5", 1e-3, 1, [0, 10], [4.0, 3.0], 10),
            run("joint:generation:p=0.1", 3e-3, 0, [0, 10], [5.0, 6.0], 0)]
    table = G.dev_curves(runs, lr=1e-3)
    assert table.panel.tolist() == ["alone: antonym"] * 2 + ["joint: classification"] * 3
    assert table.p.tolist() == ["p = 50%"] * 2 + ["p = 10%"] * 3
    assert table.dev_loss.tolist() == [4.0, 3.0, 3.0, 2.5, 2.7] and table.step.tolist() == [0, 10, 0, 10, 20]
    assert table.best.tolist() == [False, True, False, True, False] and table.seed.tolist() == [1, 1, 0, 0, 0]
    assert len(G.dev_curves(runs)) == 7
    with pytest.raises(ValueError, match="not a sweep run"):
        G.dev_curves([run("task:antonym:global/all", 1e-3, 0, [0], [1.0], 0)])


def test_sweep_protocol_takes_the_profile_settings_and_trains_one_task_per_step():
    from dataclasses import replace

    from nrnlib.profiles import PROFILES
    from nrnlib.protocol import Protocol

    standard, smoke = PROFILES["standard"], PROFILES["smoke"]
    p = G.sweep_protocol(standard)
    assert (p.dev_size, p.max_steps, p.task_batches) == (standard.generalization_dev_size,
                                                         standard.generalization_max_steps, True)
    assert p.dev_size < standard.dev_size and p.batch_size == standard.finetune_batch_size
    # without the sweep's own settings: the profile's protocol, plus task batches
    bare = replace(standard, generalization_dev_size=None, generalization_max_steps=None)
    assert G.sweep_protocol(bare) == replace(Protocol.from_profile(bare), task_batches=True)
    assert G.sweep_protocol(smoke).dev_size == smoke.dev_size
