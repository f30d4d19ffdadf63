"""Deactivation: activation zeroing == parameter zeroing, exact restoration, validation."""

import pytest
import torch

from nrnlib.ablation import deactivate
from nrnlib.neurons import NeuronSet

IDS = torch.tensor([[5, 17, 99, 3, 250, 7], [11, 12, 13, 14, 15, 16]])


def _logits(model):
    with torch.no_grad():
        return model.original_model(input_ids=IDS).logits


def _snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _assert_bit_identical(model, snapshot):
    for name, p in model.named_parameters():
        assert torch.equal(p, snapshot[name]), name


def _neurons(model):
    L, D = model.cfg.n_layers, model.cfg.d_mlp
    return NeuronSet.from_indices(L, D, {0: [0, 5, D - 1], L - 1: list(range(0, D, 7))}, name="some")


def test_activation_and_parameter_zeroing_agree(tiny_model):
    base = _logits(tiny_model)
    neurons = _neurons(tiny_model)
    snap = _snapshot(tiny_model)
    with deactivate(tiny_model, neurons, mode="activation"):
        by_activation = _logits(tiny_model)
    with deactivate(tiny_model, neurons, mode="parameter"):
        by_parameter = _logits(tiny_model)
        # the output slices of the selected neurons are zero inside the block
        with pytest.raises(AssertionError):
            _assert_bit_identical(tiny_model, snap)
    with deactivate(tiny_model, neurons, mode="parameter", include_inputs=True):
        with_inputs = _logits(tiny_model)
    assert torch.allclose(by_activation, by_parameter, atol=1e-6, rtol=0)
    assert torch.allclose(by_activation, with_inputs, atol=1e-6, rtol=0)
    assert (by_activation - base).abs().max() > 1e-4
    assert torch.equal(_logits(tiny_model), base)  # hooks gone, parameters back
    _assert_bit_identical(tiny_model, snap)


def test_activation_mode_zeroes_hook_post(tiny_model):
    neurons = _neurons(tiny_model)
    seen = {}
    last = tiny_model.cfg.n_layers - 1
    with deactivate(tiny_model, neurons):
        # a hook added after ours sees the masked activations
        with tiny_model.hooks(fwd_hooks=[(f"blocks.{last}.mlp.hook_post", lambda x, hook: seen.setdefault("x", x))]):
            _logits(tiny_model)
    x = seen["x"]
    assert torch.all(x[..., neurons.mask[last]] == 0) and torch.all(x[..., ~neurons.mask[last]] != 0)


@pytest.mark.parametrize("mode,include_inputs", [("parameter", False), ("parameter", True), ("activation", False)])
def test_restored_bit_exactly_after_exception(tiny_model, mode, include_inputs):
    snap = _snapshot(tiny_model)
    base = _logits(tiny_model)
    with pytest.raises(RuntimeError, match="inside"):
        with deactivate(tiny_model, _neurons(tiny_model), mode=mode, include_inputs=include_inputs):
            raise RuntimeError("inside")
    _assert_bit_identical(tiny_model, snap)
    assert torch.equal(_logits(tiny_model), base)


def test_parameter_mode_zeroes_exactly_the_neuron_slices(tiny_model, hf_mlps):
    neurons = _neurons(tiny_model)
    snap = _snapshot(tiny_model)
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    with deactivate(tiny_model, neurons, mode="parameter", include_inputs=True):
        changed = {names[id(p)] for p in tiny_model.parameters() if not torch.equal(p, snap[names[id(p)]])}
        for layer, (mlp, _) in enumerate(hf_mlps(tiny_model)):
            js = neurons.mask[layer]
            if hasattr(mlp, "down_proj"):  # HF Linear: weight [out, in]
                out_w = mlp.down_proj.weight
                assert torch.all(out_w[:, js] == 0) and torch.equal(out_w[:, ~js], snap[names[id(out_w)]][:, ~js])
                for w in (mlp.gate_proj.weight, mlp.up_proj.weight):
                    assert torch.all(w[js] == 0) and torch.equal(w[~js], snap[names[id(w)]][~js])
            else:  # GPT-2 Conv1D: weight [in, out]
                out_w, in_w, in_b = mlp.c_proj.weight, mlp.c_fc.weight, mlp.c_fc.bias
                assert torch.all(out_w[js] == 0) and torch.equal(out_w[~js], snap[names[id(out_w)]][~js])
                assert torch.all(in_w[:, js] == 0) and torch.all(in_b[js] == 0)
                assert torch.equal(in_w[:, ~js], snap[names[id(in_w)]][:, ~js])
    assert changed and all(".mlp." in n for n in changed)
    _assert_bit_identical(tiny_model, snap)


def test_validation(tiny_model):
    wrong = NeuronSet.empty(tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp + 1)
    with pytest.raises(ValueError, match="MLP neurons"):
        with deactivate(tiny_model, wrong):
            pass
    with pytest.raises(ValueError, match="mode"):
        with deactivate(tiny_model, _neurons(tiny_model), mode="weights"):
            pass
    base = _logits(tiny_model)
    with deactivate(tiny_model, NeuronSet.empty(tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp), mode="parameter"):
        assert torch.equal(_logits(tiny_model), base)


@pytest.mark.wrong_type
def test_neurons_must_be_a_neuron_set(tiny_model):
    with pytest.raises(TypeError, match="NeuronSet"):
        with deactivate(tiny_model, torch.zeros(3, 96, dtype=torch.bool)):
            pass
