"""Per-layer similarity of neuron sets' parameters (Paper A Figure 3), against hand computations."""

import math

import numpy as np
import pytest
import torch

from nrnlib.neurons import NeuronSet
from nrnlib.similarity import DEFINITIONS, layer_similarity, set_similarity


def test_hand_computed_2d_example():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[2.0, 0.0]])  # length does not matter
    assert set_similarity(a, b, "centroid") == pytest.approx(0.5 / math.sqrt(0.5))  # cos((.5,.5), (1,0))
    assert set_similarity(a, b, "matching") == pytest.approx(0.5 * ((1 + 0) / 2 + 1))
    assert math.isnan(set_similarity(a[:0], b))
    with pytest.raises(ValueError, match="definition"):
        set_similarity(a, b, "jaccard")
    with pytest.raises(ValueError, match="NaN or inf"):
        set_similarity(a, torch.tensor([[float("nan"), 0.0]]))


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_order_and_per_neuron_scale_do_not_matter(definition):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=gen, dtype=torch.float64), torch.randn(3, 7, generator=gen, dtype=torch.float64)
    scaled = a[[4, 2, 0, 1, 3]] * torch.tensor([[3.0], [0.5], [1.0], [7.0], [2.0]], dtype=torch.float64)
    assert set_similarity(scaled, b, definition) == pytest.approx(set_similarity(a, b, definition), rel=1e-12)
    assert set_similarity(a, a, definition) == pytest.approx(1.0)


def _hand_vectors(model, layer, neurons):
    """θ_n = [gate[n, :]; up[n, :]; down[:, n]] read straight from the HF Llama MLP (not nrnlib's geometry)."""
    mlp = model.original_model.model.layers[layer].mlp
    mlp = getattr(mlp, "_original_component", mlp)
    w = {name: getattr(getattr(mlp, name), "_original_component", getattr(mlp, name)).weight.detach().double()
         for name in ("gate_proj", "up_proj", "down_proj")}
    return np.stack([np.concatenate([w["gate_proj"][n].numpy(), w["up_proj"][n].numpy(), w["down_proj"][:, n].numpy()])
                     for n in neurons])


def test_layer_similarity_against_a_hand_computation(tiny_model):
    if "llama" not in tiny_model.cfg.model_name:
        pytest.skip("the hand computation reads the Llama layout")
    n_layers, d_mlp = tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp
    a = NeuronSet.from_indices(n_layers, d_mlp, {0: [1, 5, 9], 2: [3]})
    b = NeuronSet.from_indices(n_layers, d_mlp, {0: [2, 5], 1: [7], 2: [4, 8, 11]})
    got = layer_similarity(tiny_model, a, b, "centroid")
    for layer in (0, 2):
        va = _hand_vectors(tiny_model, layer, a.indices(layer).tolist())
        vb = _hand_vectors(tiny_model, layer, b.indices(layer).tolist())
        ca = (va / np.linalg.norm(va, axis=1, keepdims=True)).mean(0)
        cb = (vb / np.linalg.norm(vb, axis=1, keepdims=True)).mean(0)
        assert float(got[layer]) == pytest.approx(ca @ cb / np.linalg.norm(ca) / np.linalg.norm(cb), rel=1e-9)
    assert math.isnan(float(got[1]))  # a has no neuron in layer 1


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_a_set_with_itself_is_one_in_every_layer(tiny_model, definition):
    s = NeuronSet.from_indices(tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp,
                               {layer: [0, 3, 10 + layer] for layer in range(tiny_model.cfg.n_layers)})
    torch.testing.assert_close(layer_similarity(tiny_model, s, s, definition),
                               torch.ones(tiny_model.cfg.n_layers, dtype=torch.float64))
