"""Deactivate a set of neurons (Paper A's deactivation experiments).

Two equivalent ways to silence neuron j of layer l:

- ``mode="activation"``: multiply ``blocks.{l}.mlp.hook_post`` (the neuron outputs ω) by a 0/1
  keep mask, through TransformerLens hooks;
- ``mode="parameter"``: zero the neuron's output slice (W_2 row j, HF ``down_proj.weight[:, j]`` or
  GPT-2 ``c_proj.weight[j]``) and, with ``include_inputs``, its input slices too (W_1 column j:
  gate/up rows, biases). Exactly the zeroed entries are saved and written back, bit for bit, on exit.

Both give the same logits (the neuron's contribution ω_j · W_2[j] vanishes either way).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from nrnlib.models import NeuronGeometry
from nrnlib.neurons import NeuronSet

MODES = ("activation", "parameter")


def _keep_hook(keep: torch.Tensor):
    cache: dict[tuple, torch.Tensor] = {}

    def hook(x: torch.Tensor, hook=None) -> torch.Tensor:
        key = (x.device, x.dtype)
        if key not in cache:
            cache[key] = keep.to(device=x.device, dtype=x.dtype)
        return x * cache[key]

    return hook


@contextlib.contextmanager
def _deactivate_activations(model, neurons: NeuronSet) -> Iterator[None]:
    fwd_hooks = [
        (f"blocks.{layer}.mlp.hook_post", _keep_hook(~neurons.mask[layer])) for layer in neurons.layers()
    ]
    with model.hooks(fwd_hooks=fwd_hooks):
        yield


@contextlib.contextmanager
def _deactivate_parameters(model, neurons: NeuronSet, include_inputs: bool) -> Iterator[None]:
    geometry = NeuronGeometry.of(model)
    saved: list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for layer in neurons.layers():
                slices = geometry.slices(model, layer) if include_inputs else geometry.output_slices(model, layer)
                for s in slices:
                    idx = neurons.indices(layer).to(s.param.device)
                    original = s.param.detach().index_select(s.dim, idx).clone()
                    saved.append((s.param, s.dim, idx, original))
                    s.param.detach().index_fill_(s.dim, idx, 0)
        yield
    finally:
        with torch.no_grad():
            for param, dim, idx, original in reversed(saved):
                param.detach().index_copy_(dim, idx, original)


@contextlib.contextmanager
def deactivate(
    model, neurons: NeuronSet, mode: str = "activation", include_inputs: bool = False
) -> Iterator[None]:
    """Within the block, ``neurons`` of ``model`` output zero (see the module docstring).

    ``mode="activation"`` (hooks on ``hook_post``, only the layers with selected neurons) or
    ``"parameter"`` (zero W_2 rows; also W_1 columns and biases when ``include_inputs``). The model
    is restored exactly on exit, also after an exception.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(neurons, NeuronSet):
        raise TypeError(f"neurons must be a NeuronSet, got {type(neurons).__name__}")
    neurons.check_model(model)
    if mode == "activation":
        if include_inputs:
            raise ValueError("include_inputs applies to mode='parameter' only")
        with _deactivate_activations(model, neurons):
            yield
    else:
        with _deactivate_parameters(model, neurons, include_inputs):
            yield
