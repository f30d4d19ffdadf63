"""Notebook 06 (NCFT): what each stage may train, resuming an interrupted sequence, R by hand."""

import numpy as np
import pytest
import torch

from nrnlib import store
from nrnlib.experiments import ncft
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
    r = ncft.performance_matrix(sequence)
    np.testing.assert_allclose(r, [[-2.0, -4.0], [-1.0, -3.0], [-2.0, -1.0]])
    m = ncft.sequence_metrics(sequence)
    assert m["BWT"] == pytest.approx(-2.0 - -1.0) and m["FWT"] == pytest.approx(-3.0 - -4.0)
    assert m["AP"] == pytest.approx(-1.5) and m["forgetting"] == pytest.approx(1.0)


def test_a_sequence_needs_two_distinct_tasks(tiny_model, sequence_setup):
    with pytest.raises(ValueError, match="two distinct"):
        _run(tiny_model, sequence_setup[2], order=("parity", "parity"))
    assert store.cache_enabled()


def test_ncft_claims_pair_methods_by_order_and_seed():
    """Two (order, seed) pairs; ncft loses 0.5 less of task a than seqft on both, and learns the current
    task 0.25 worse: forgetting holds (BWT gap 0.5), the current-task claim does not hold."""
    from nrnlib.experiments.verdicts import ncft_claims

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
