"""Notebook 06 (NCFT): what each stage may train, resuming an interrupted sequence, R by hand."""

import numpy as np
import pytest
import torch

from nrnlib import store
from nrnlib.experiments import ncft, ncft_results
from nrnlib.neurons import NeuronSet
from nrnlib.protocol import Protocol


def _protocol():
    return Protocol(dev_size=2, eval_every=1, patience=1, max_steps=2, batch_size=2, n_train=4, dev_batch_size=2)


@pytest.fixture()
def sequence_setup(tiny_model, parity_task, echo_task, tmp_path, monkeypatch):
    """Three tasks (parity, echo, parity under another name) and a selector that gives each task a
    fixed set of its own, counting its calls."""
    from dataclasses import replace

    monkeypatch.setenv("NRN_CACHE", str(tmp_path / "cache"))
    tasks = {"parity": parity_task, "echo": echo_task, "parity2": replace(parity_task, name="parity2")}
    monkeypatch.setattr(ncft, "get_task", tasks.__getitem__)
    L, D = tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp
    sets = {"parity": NeuronSet.from_indices(L, D, {0: range(0, 8), L - 1: [1, 2]}).for_model(tiny_model),
            "echo": NeuronSet.from_indices(L, D, {0: range(4, 12)}).for_model(tiny_model),
            "parity2": NeuronSet.from_indices(L, D, {L - 1: range(0, 6)}).for_model(tiny_model)}
    calls = []

    def selector(model, task):
        calls.append(task.name)
        return sets[task.name]

    return tasks, sets, selector, calls


def _run(model, selector, method="ncft", order=("parity", "echo", "parity2")):
    return ncft.run_sequence(model, order, method, _protocol(), lr=1e-2, seed=0, selector=selector,
                             select_settings={"fixed": True}, n_test=4)


def test_w_ncft_never_trains_an_earlier_stage_neuron(tiny_model, sequence_setup):
    _, sets, selector, _ = sequence_setup
    got = ncft.stage_neurons("w_ncft", tiny_model, sequence_setup[0]["echo"], 1, 0, selector, sets["echo"],
                             [sets["parity"]])
    assert got.indices(0).tolist() == list(range(8, 12)) and got.count == 4
    assert ncft.stage_neurons("seqft", tiny_model, None, 0, 0, selector, sets["echo"], []) is None
    rnd = ncft.stage_neurons("random", tiny_model, None, 2, 1, selector, sets["echo"], [])
    assert rnd.count == sets["echo"].count and rnd != sets["echo"]
    with pytest.raises(ValueError, match="method"):
        ncft.stage_neurons("bogus", tiny_model, sequence_setup[0]["echo"], 0, 0, selector, sets["echo"], [])


def test_interrupted_sequence_resumes_at_the_next_stage_with_identical_results(tiny_model, sequence_setup, tmp_path,
                                                                              monkeypatch):
    """Interrupt during stage 2: the checkpoint of stage 1 holds changes only inside parity's and echo's
    neurons (everything else bit-identical); the rerun trains stage 2 only and its records equal an
    uninterrupted run's; every checkpoint is gone at the end; the model is restored."""
    from nrnlib.models import NeuronGeometry

    _, sets, selector, _ = sequence_setup
    real, trained = ncft.train_to_convergence, []

    def counting(*args, **kwargs):
        trained.append(args[1][0].name)
        if counting.fail and len(trained) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    counting.fail = True
    monkeypatch.setattr(ncft, "train_to_convergence", counting)
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_model, selector)
    assert all(torch.equal(p, before[n]) for n, p in tiny_model.named_parameters())
    checkpoints = list((tmp_path / "cache" / "ncft_checkpoint").glob("*.safetensors"))
    assert len(checkpoints) == 1  # stage 0's was deleted when stage 1's was written
    from safetensors.torch import load_file

    changed = load_file(str(checkpoints[0]))
    allowed = sets["parity"] | sets["echo"]
    geometry = NeuronGeometry.of(tiny_model)
    params = dict(tiny_model.named_parameters())
    mlp_params = {id(sl.param) for layer in range(tiny_model.cfg.n_layers) for sl in geometry.slices(tiny_model, layer)}
    assert changed and all(id(params[name]) in mlp_params for name in changed), "only MLP weights may move"
    for name, value in changed.items():
        diff = value != before[name].cpu()
        assert diff.any()
        # every changed entry lies in a trained neuron's slice of an MLP weight
        for layer in range(tiny_model.cfg.n_layers):
            for sl in geometry.slices(tiny_model, layer):
                if sl.param is params[name]:
                    outside = torch.ones(tiny_model.cfg.d_mlp, dtype=torch.bool)
                    outside[allowed.indices(layer)] = False
                    view = diff.movedim(sl.dim, 0) if diff.ndim > 1 else diff
                    assert not view[outside].any(), f"{name}: an entry outside the trained neurons moved"
    counting.fail, trained[:] = False, []
    resumed = _run(tiny_model, selector)
    assert trained == ["parity2"]
    assert not list((tmp_path / "cache" / "ncft_checkpoint").glob("*.safetensors"))
    monkeypatch.setenv("NRN_CACHE", str(tmp_path / "fresh"))
    fresh = _run(tiny_model, selector)
    for a, b in zip(resumed["stages"], fresh["stages"], strict=True):
        assert a["neurons"] == b["neurons"]
        assert a["curve"]["best_dev_loss"] == pytest.approx(b["curve"]["best_dev_loss"])
        np.testing.assert_allclose(a["scores"]["echo"]["per_example"]["logprob"],
                                   b["scores"]["echo"]["per_example"]["logprob"], rtol=1e-6)
    assert all(torch.equal(p, before[n]) for n, p in tiny_model.named_parameters())


def test_performance_matrix_by_hand():
    def scores(values):
        return {t: {"per_example": {"logprob": v}} for t, v in values.items()}

    sequence = {"order": ["a", "b"], "untrained": scores({"a": [-3.0, -1.0], "b": [-4.0, -4.0]}),
                "stages": [{"scores": scores({"a": [-1.0, -1.0], "b": [-3.0, -3.0]})},
                           {"scores": scores({"a": [-2.0, -2.0], "b": [-1.0, -1.0]})}]}
    r = ncft_results.performance_matrix(sequence)
    np.testing.assert_allclose(r, [[-2.0, -4.0], [-1.0, -3.0], [-2.0, -1.0]])
    m = ncft_results.sequence_metrics(sequence)
    assert m["BWT"] == pytest.approx(-2.0 - -1.0) and m["FWT"] == pytest.approx(-3.0 - -4.0)
    assert m["AP"] == pytest.approx(-1.5) and m["forgetting"] == pytest.approx(1.0)


def test_a_sequence_needs_two_distinct_tasks(tiny_model, sequence_setup):
    with pytest.raises(ValueError, match="two distinct"):
        _run(tiny_model, sequence_setup[2], order=("parity", "parity"))
    assert store.cache_enabled()


def test_ncft_claims_pair_methods_by_order_and_seed():
    """Two (order, seed) pairs; ncft loses 0.5 less of task a than seqft on both, and learns the current
    task 0.25 worse: forgetting holds (BWT gap 0.5), the current-task claim does not hold."""
    from nrnlib.experiments.ncft_results import ncft_claims

    def seq(method, seed, after_b_on_a, current_shift):
        def scores(a, b):
            return {"a": {"per_example": {"logprob": [a, a]}}, "b": {"per_example": {"logprob": [b, b]}}}

        return {"method": method, "order": ["a", "b"], "seed": seed, "untrained": scores(-3.0, -3.0),
                "stages": [{"scores": scores(-1.0 + current_shift, -3.0)},
                           {"scores": scores(after_b_on_a, -1.0 + current_shift)}]}

    sequences = [seq("seqft", s, -2.0, 0.0) for s in (0, 1)] + [seq("ncft", 0, -1.5 - 0.25, -0.25),
                                                                 seq("ncft", 1, -1.5 - 0.25, -0.25)]
    claims = {c.id: c for c in ncft_claims(sequences, "smoke")}
    forgetting = claims["A.ncft.forgetting"]
    assert forgetting.estimate == pytest.approx(0.5) and forgetting.verdict == "holds"
    current = claims["ours.ncft.ncft_current_task"]
    assert current.estimate == pytest.approx(-0.25) and current.verdict == "does not hold"
    # AP: seqft ends at (-2, -1), ncft at (-1.75, -1.25): the same mean, so no gain
    assert claims["ours.ncft.ncft_ap"].estimate == pytest.approx(0.0)
    assert "ours.ncft.ncft_vs_random" not in claims  # no random sequences: no comparison
    sequences += [seq("random", s, -2.5, 0.0) for s in (0, 1)]
    claims = {c.id: c for c in ncft_claims(sequences, "smoke")}
    # BWT(ncft) = -1.75 - (-1.25) = -0.5; BWT(random) = -2.5 - (-1) = -1.5
    assert claims["ours.ncft.ncft_vs_random"].estimate == pytest.approx(1.0)
    assert claims["ours.ncft.ncft_vs_random"].verdict == "holds"
    assert claims["ours.ncft.random_vs_seqft"].estimate == pytest.approx(-0.5)


def test_new_methods_run_a_sequence_and_replay_starts_as_seqft(tiny_model, sequence_setup):
    """replay's stage 0 has no memory, so it trains exactly as seqft (equal curves); later stages
    replay a memory of earlier tasks; graded W-NCFT trains the selector's set with weights below 1
    where an earlier stage trained a neuron; LoRA (Llama) moves no MLP weight."""
    _, sets, selector, _ = sequence_setup
    L, D = tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp
    relevance = torch.arange(L * D, dtype=torch.float32).reshape(L, D) + 1.0
    order = ("parity", "echo")

    def run(method, **kw):
        return ncft.run_sequence(tiny_model, order, method, _protocol(), lr=1e-2, seed=0, selector=selector,
                                 select_settings={"fixed": True}, n_test=4,
                                 settings={"replay_per_task": 2, "memory_batch": 1}, **kw)

    seqft, replay = run("seqft"), run("replay")
    assert replay["stages"][0]["curve"]["dev_loss"] == seqft["stages"][0]["curve"]["dev_loss"]
    assert [r["memory"] for r in replay["stages"]] == [0, 2]
    assert replay["stages"][1]["curve"]["dev_loss"] != seqft["stages"][1]["curve"]["dev_loss"]
    graded = run("w_ncft_graded", relevance=lambda m, t: relevance)
    assert graded["stages"][1]["neurons"] == {str(k): sets["echo"].indices(k).tolist() for k in sets["echo"].layers()}
    # relevance grows with the index, so the rank weights of a set of n are n/n ... 1/n, highest index first
    q0 = [(10 - i) / 10 for i in range(10)]  # parity's 10 neurons, nothing trained before: mean 0.55
    q1 = [(8 - i) / 8 * (0.5 if 11 - i < 8 else 1.0) for i in range(8)]  # echo's 11..4; 4..7 were parity's
    expected = [sum(q0) / 10, sum(q1) / 8]
    assert [r["mean_weight"] for r in graded["stages"]] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="relevance"):
        ncft.run_sequence(tiny_model, ("echo", "parity"), "w_ncft_graded", _protocol(), lr=1e-2, seed=0,
                          selector=selector, select_settings={}, n_test=4)
    for s in (seqft, replay, graded):
        assert np.isfinite(ncft_results.performance_matrix(s)).all()
    from nrnlib.lora import lora_target_names

    if lora_target_names(tiny_model):
        lora = run("lora")
        assert lora["stages"][0]["neurons"] is None and np.isfinite(ncft_results.performance_matrix(lora)).all()


def test_joint_reference_scores_every_task(tiny_model, sequence_setup):
    ref = ncft.joint_reference(tiny_model, ("parity", "echo"), _protocol(), lr=1e-2, seed=0, n_test=4)
    assert ref["tasks"] == ["echo", "parity"] and set(ref["scores"]) == {"echo", "parity"}
    by_hand = [np.mean(ref["scores"][t]["per_example"]["logprob"]) for t in ("parity", "echo")]
    np.testing.assert_allclose(ncft_results.joint_performance(ref, ("parity", "echo")), by_hand)
    assert ref["curve"]["n_trainable_entries"] == sum(p.numel() for p in tiny_model.parameters())


def test_metrics_table_means_and_joint_row():
    """Two seqft sequences with BWT −1 and −3 (by hand): mean −2, its CI inside [−3, −1]; the joint
    reference adds one AP row per seed."""
    from nrnlib.experiments.ncft_results import metrics_table

    def scores(a, b):
        return {"a": {"per_example": {"logprob": [a]}}, "b": {"per_example": {"logprob": [b]}}}

    def seq(seed, final_a):
        return {"method": "seqft", "order": ["a", "b"], "seed": seed, "untrained": scores(-3.0, -3.0),
                "stages": [{"scores": scores(-1.0, -3.0)}, {"scores": scores(final_a, -1.0)}]}

    joint = [{"tasks": ["a", "b"], "scores": scores(-1.0, -2.0)}, {"tasks": ["a", "b"], "scores": scores(-1.0, -1.0)}]
    table = metrics_table([seq(0, -2.0), seq(1, -4.0)], joint=joint).set_index(["method", "metric"])
    bwt = table.loc[("seqft", "BWT")]
    assert bwt["mean"] == pytest.approx(-2.0) and -3.0 <= bwt.ci_low <= bwt.ci_high <= -1.0 and bwt.n == 2
    assert table.loc[("joint", "AP")]["mean"] == pytest.approx(np.mean([-1.5, -1.0]))
    assert ("joint", "BWT") not in table.index


def test_learning_rates_are_chosen_per_arm_type_on_the_first_task(tiny_model, sequence_setup, monkeypatch):
    """One selection per arm type over that type's grid, on the first task from the model as it is;
    a one-value grid is taken as it is, without a training run."""
    from nrnlib.lora import lora_target_names

    _, _, selector, calls = sequence_setup
    monkeypatch.setattr(ncft, "get_task", sequence_setup[0].__getitem__)
    protocol = Protocol(dev_size=2, eval_every=1, patience=1, max_steps=2, batch_size=2, n_train=4, dev_batch_size=2,
                        lr_grids={"neurons": (1e-3, 1e-2), "all": (1e-4,), "lora": (1e-3,)})
    types = ["all", "neurons"] + (["lora"] if lora_target_names(tiny_model) else [])
    real_select, trained = ncft.select_lr, []
    monkeypatch.setattr(ncft, "select_lr", lambda *a, **k: trained.append(a[2][0].arm_type) or real_select(*a, **k))
    chosen = ncft_results.ncft_learning_rates(tiny_model, "parity", protocol, types, selector=selector)
    assert list(chosen) == types and chosen["all"] == {"lr": 1e-4, "scores": {}}
    assert trained == ["neurons"]  # "all" and "lora" have one-value grids
    assert set(chosen["neurons"]["scores"]) == {1e-3, 1e-2}
    best = min(chosen["neurons"]["scores"], key=chosen["neurons"]["scores"].get)
    assert chosen["neurons"]["lr"] == best and calls == ["parity"]


def test_every_stage_starts_with_fresh_optimizer_state(tiny_model, sequence_setup, monkeypatch):
    """No AdamW state crosses a stage boundary: each stage trains with its own optimizer, whose first
    step finds no moments (its step count is 1 afterwards), and that optimizer holds exactly the
    stage's trainable slices (3 stages: 3 optimizers)."""
    _, sets, selector, _ = sequence_setup
    real_step, first_steps, sizes = torch.optim.AdamW.step, {}, {}

    def recording(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        if id(self) not in first_steps:
            first_steps[id(self)] = sorted({int(s["step"]) for s in self.state.values()})
            sizes[id(self)] = sum(p.numel() for g in self.param_groups for p in g["params"])
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    _run(tiny_model, selector)
    assert len(first_steps) == 3 and all(steps == [1] for steps in first_steps.values())
    from nrnlib.models import NeuronGeometry

    # entries per neuron: Llama gate row, up row, down column; GPT-2 c_fc column and bias, c_proj row
    per_neuron = sum(sl.param.numel() // sl.param.shape[sl.dim]
                     for sl in NeuronGeometry.of(tiny_model).slices(tiny_model, 0))
    expected = [sets[t].count * per_neuron for t in ("parity", "echo", "parity2")]
    assert list(sizes.values()) == expected


def _no_time(scores):
    """Per-task scores without their wall times."""
    return {task: {k: v for k, v in result.items() if k != "wall_s"} for task, result in scores.items()}


@pytest.mark.one_model
def test_run_sequences_with_two_workers_equal_one_process(tiny_model, sequence_setup, tmp_path, monkeypatch):
    """Sequences shared over two forked processes give the same stage records (curves, neurons, scores)
    as one process (each a fresh cache), both processes trained stages, and the order is the jobs'."""
    import json
    import os

    _, _, selector, _ = sequence_setup
    jobs = [dict(order=order, method=method, lr=1e-2, seed=0)
            for order in (("parity", "echo"), ("echo", "parity")) for method in ("ncft", "seqft")]
    out = {}
    for workers in (1, 2):
        monkeypatch.setenv("NRN_CACHE", str(tmp_path / f"cache{workers}"))
        out[workers] = ncft.run_sequences(tiny_model, jobs, workers=workers, progress=False, protocol=_protocol(),
                                          selector=selector, select_settings={"fixed": True}, n_test=4)
    assert [(s["order"], s["method"]) for s in out[2]] == [(list(j["order"]), j["method"]) for j in jobs]
    for one, two in zip(out[1], out[2], strict=True):
        assert [r["curve"]["train_loss"] for r in one["stages"]] == [r["curve"]["train_loss"] for r in two["stages"]]
        assert [_no_time(r["scores"]) for r in one["stages"]] == [_no_time(r["scores"]) for r in two["stages"]]
        assert [r["neurons"] for r in one["stages"]] == [r["neurons"] for r in two["stages"]]
    entries = (tmp_path / "cache2" / "ncft_stage").glob("*.json")
    pids = {json.loads(p.read_text())["provenance"]["pid"] for p in entries}
    assert os.getpid() in pids and len(pids) >= 2


def test_a_stage_entry_records_the_time_its_stage_took(tiny_model, sequence_setup, tmp_path):
    """The store times what it computes: a stage's entry must carry at least the seconds its own
    training curve reports (a record stored after the fact would carry about 0 s)."""
    import json

    _run(tiny_model, sequence_setup[2])
    entries = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "ncft_stage").glob("*.json")]
    assert len(entries) == 3
    for entry in entries:
        assert entry["provenance"]["compute_s"] >= entry["value"]["curve"]["wall_s"] > 0
