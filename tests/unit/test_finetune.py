"""Masked and full fine-tuning: frozen entries bit-identical under AdamW + weight decay, trained
entries move, loss goes down, data order fixed by the seed, flags and hooks restored."""

import pytest
import torch

import nrnlib.losses
from nrnlib.finetune import TrainLog, finetune, trainable_entries
from nrnlib.neurons import NeuronSet


def _expected_trained(model, hf_mlps, neurons):
    """{id(param): bool mask of the entries a neuron fine-tune may change}, written out per
    architecture (independently of NeuronGeometry)."""
    out = {}
    for layer, (mlp, _) in enumerate(hf_mlps(model)):
        js = neurons.mask[layer]
        if hasattr(mlp, "down_proj"):  # HF Linear weights are [out, in]
            for w in (mlp.gate_proj.weight, mlp.up_proj.weight):
                out[id(w)] = js[:, None].expand_as(w)
            out[id(mlp.down_proj.weight)] = js[None, :].expand_as(mlp.down_proj.weight)
        else:  # GPT-2 Conv1D weights are [in, out]
            out[id(mlp.c_fc.weight)] = js[None, :].expand_as(mlp.c_fc.weight)
            out[id(mlp.c_fc.bias)] = js
            out[id(mlp.c_proj.weight)] = js[:, None].expand_as(mlp.c_proj.weight)
    return out


def _neurons(model):
    L, D = model.cfg.n_layers, model.cfg.d_mlp
    return NeuronSet.from_indices(L, D, {0: [3, 40], L - 1: [0, 1, D - 1]})


def test_masked_finetune_freezes_everything_else(model, hf_mlps, parity_task):
    neurons = _neurons(model)
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    flags = [p.requires_grad for p in params]
    log = finetune(model, [parity_task], neurons=neurons, steps=3, lr=1e-2, batch_size=4, weight_decay=0.1,
                   progress=False)
    assert isinstance(log, TrainLog) and log.steps == 3 and len(log.losses) == 3 and log.wall_s > 0
    expected = _expected_trained(model, hf_mlps, neurons)
    n_trained = 0
    for p, old in zip(params, before, strict=True):
        trained = expected.get(id(p), torch.zeros_like(p, dtype=torch.bool))
        assert torch.equal(p[~trained], old[~trained])  # frozen entries: bit-identical
        assert torch.all(p[trained] != old[trained])  # every trained entry moved
        n_trained += int(trained.sum())
    assert log.n_trainable_entries == n_trained == trainable_entries(model, neurons)
    per_neuron = 3 * model.cfg.d_model if hasattr(hf_mlps(model)[0][0], "down_proj") else 2 * model.cfg.d_model + 1
    assert n_trained == neurons.count * per_neuron
    # flags, gradient hooks and mode restored
    assert [p.requires_grad for p in params] == flags
    assert all(not p._backward_hooks for p in params) and all(p.grad is None for p in params)
    assert not model.training and not model.original_model.training


def test_full_finetune_moves_every_tensor_and_lowers_the_loss(model, parity_task):
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    log = finetune(model, parity_task, steps=6, lr=3e-3, batch_size=4, weight_decay=0.01, progress=False)
    assert all(not torch.equal(p, old) for p, old in zip(params, before, strict=True))
    assert log.n_trainable_entries == sum(p.numel() for p in params) == trainable_entries(model)
    assert sum(log.losses[-2:]) < sum(log.losses[:2])


def test_same_seed_same_batches_for_every_arm(model, parity_task, echo_task, monkeypatch):
    seen = []
    real = nrnlib.losses.answer_loss

    def spy(m, batch, **kw):
        seen.append(batch.input_ids.clone())
        return real(m, batch, **kw)

    monkeypatch.setattr(nrnlib.losses, "answer_loss", spy)
    tasks = [parity_task, echo_task]
    runs = {}
    for arm, neurons, seed in [("neurons", _neurons(model), 0), ("random", _neurons(model).random_like(1), 0),
                               ("other-seed", _neurons(model), 1)]:
        seen.clear()
        finetune(model, tasks, neurons=neurons, steps=3, lr=1e-4, batch_size=3, seed=seed, n_train=4, progress=False)
        runs[arm] = [b.tolist() for b in seen]
    assert runs["neurons"] == runs["random"] and runs["neurons"] != runs["other-seed"]


def test_validation(model, parity_task):
    with pytest.raises(ValueError, match="empty"):
        finetune(model, parity_task, neurons=NeuronSet.empty(model.cfg.n_layers, model.cfg.d_mlp), steps=1)
    with pytest.raises(ValueError, match="MLP neurons"):
        finetune(model, parity_task, neurons=NeuronSet.empty(1, 2), steps=1)
    with pytest.raises(ValueError, match="batch_size"):
        finetune(model, parity_task, steps=1, batch_size=0)


def test_restored_after_puts_back_every_parameter_bit_exactly(model, parity_task):
    """Training inside restored_after changes the model within the block only, also on exception."""
    from nrnlib.model_state import restored_after

    before = [p.detach().clone() for p in model.parameters()]
    with restored_after(model):
        finetune(model, [parity_task], steps=2, lr=1e-2, batch_size=2, progress=False)
        assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    with pytest.raises(RuntimeError, match="boom"), restored_after(model):
        with torch.no_grad():
            next(iter(model.parameters())).add_(1.0)
        raise RuntimeError("boom")
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert not model.training


def test_set_training_sets_the_flags_model_train_sets(model):
    """``set_training`` leaves every module (the bridge's and its unregistered ``original_model``'s)
    with the flag ``model.train(mode)`` gives; a module whose ``train`` does more than set the flag
    makes it call ``model.train`` itself, so that override still runs."""
    from nrnlib.model_state import eval_mode, set_training

    def flags():
        return [m.training for root in (model, model.original_model) for m in root.modules()]

    for mode in (True, False, True):
        model.train(not mode)
        model.train(mode)
        expected = flags()
        model.train(not mode)
        set_training(model, mode)
        assert flags() == expected and all(f == mode for f in expected)
    with eval_mode(model):
        assert not any(flags())
    assert all(flags())

    calls = []

    class Recording(torch.nn.Module):
        def train(self, mode=True):
            calls.append(mode)
            return super().train(mode)

    model.original_model.add_module("recording", Recording())
    try:
        set_training(model, False)
        assert calls == [False] and not any(flags())
    finally:
        del model.original_model.recording
        model.eval()
