"""Neuron-sparse training: only the selected neurons' parameter slices are trainable tensors.

Masked dense training (``finetune(..., mode="masked")``) gives whole MLP matrices
``requires_grad``, computes their full weight gradient ``∂L/∂W = Σ_t g_tᵀ x_t`` and zeroes it
outside the neuron mask; AdamW then keeps two moment tensors of the whole matrix. Here, for each
parameter tensor ``W`` holding selected neurons ``J`` along dimension ``d`` (``NeuronGeometry``):

- a small trainable ``nn.Parameter`` ``S = W.index_select(d, J)`` holds the slices (``|J|/d_mlp``
  of ``W``'s entries), and every model parameter is frozen (``requires_grad=False``);
- the forward uses ``W`` itself, which always holds the current slice values: after each optimizer
  step ``W.index_copy_(d, J, S)`` writes the slices back, i.e. ``W_eff = W`` with
  ``W_eff[J] = S`` (only the entries of ``J`` are ever written, so every other entry stays
  bit-identical);
- a forward hook on the module owning ``W`` passes its output ``y`` through ``_SliceGrad``, the
  identity in the forward, whose backward hands ``∂L/∂y`` on unchanged (the frozen ``W`` carries
  the gradient to the module's input as before) and returns only the slices' gradients:

  - neurons as output features (Llama ``gate_proj``/``up_proj`` rows, GPT-2 ``c_fc`` columns and
    bias; ``y = x Wᵀ`` or ``y = x W + b``): ``∂L/∂S = g[:, J]ᵀ x`` (Linear) or ``xᵀ g[:, J]``
    (Conv1D), ``∂L/∂b_J = Σ_t g[t, J]``;
  - neurons as input features (Llama ``down_proj`` columns, GPT-2 ``c_proj`` rows):
    ``∂L/∂S = gᵀ x[:, J]`` (Linear) or ``x[:, J]ᵀ g`` (Conv1D);

  with ``g = ∂L/∂y`` and ``x`` the module's input flattened to ``[tokens, features]``.

So the weight-gradient matmuls cost ``|J|/d_mlp`` of the dense ones, and the optimizer holds state
for the slices only. The gradients equal the dense gradient's entries on ``J`` (the same sums, up
to floating-point summation order), so training equals masked dense training step for step.
Leaving the context removes the hooks and restores every ``requires_grad`` flag: the model is back
to its plain parameter layout, with the trained values written into its weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from nrnlib.model_state import unique_parameters
from nrnlib.models import NeuronGeometry
from nrnlib.neurons import NeuronSet


class SparseLayoutError(NotImplementedError):
    """A neuron's parameters sit in a module whose layout neuron-sparse training does not know."""


@dataclass(frozen=True)
class TrainableSlice:
    """One trainable slice: ``param`` holds ``target.index_select(dim, index)``."""

    name: str  # e.g. "layer 3 gate_proj.weight"
    param: nn.Parameter
    target: nn.Parameter  # the model's (frozen) full tensor
    dim: int
    index: Int[Tensor, " k"]
    role: str  # the neurons index the module's output features ("out"), input features ("in"), or its "bias"
    conv1d: bool  # GPT-2 Conv1D layout (weight [in, out]) rather than nn.Linear ([out, in])

    @torch.no_grad()
    def write_back(self) -> None:
        """``target[..., index, ...] = param`` along ``dim``; no other entry of ``target`` is written."""
        self.target.index_copy_(self.dim, self.index, self.param.detach())


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _role(module: nn.Module, param_name: str, dim: int) -> str:
    if param_name == "bias":
        return "bias"
    if isinstance(module, nn.Linear):  # weight [out, in]
        return "out" if dim == 0 else "in"
    if _is_conv1d(module):  # weight [in, out]
        return "out" if dim == 1 else "in"
    raise SparseLayoutError(
        f"neuron-sparse training knows nn.Linear and GPT-2 Conv1D layers, not {type(module).__name__}; "
        "train with finetune(..., mode='masked') instead")


def _owners(model) -> dict[int, tuple[nn.Module, str]]:
    """``id(parameter) -> (module, attribute name)`` for every parameter of the wrapped HF model."""
    root = getattr(model, "original_model", model)
    found: dict[int, tuple[nn.Module, str]] = {}
    for module in root.modules():
        for name, p in module._parameters.items():
            if p is not None:
                found.setdefault(id(p), (module, name))
    return found


class _SliceGrad(torch.autograd.Function):
    """Identity on a module's output ``y`` whose backward also returns the gradients of the slices
    (formulas in the module docstring). Inputs: ``y``, the module input ``x`` (detached), the slice
    specs ``(role, conv1d, J)``, then the slice parameters. Saved: ``x`` when a slice has the "out"
    role (a reference to a live activation), and ``x[..., J]`` per "in" slice (|J| columns)."""

    @staticmethod
    def forward(ctx, y: Float[Tensor, "*batch d_out"], x: Float[Tensor, "*batch d_in"], specs: tuple,
                *params: Float[Tensor, "..."]) -> Float[Tensor, "*batch d_out"]:
        ctx.specs = specs
        needs_x = any(role == "out" for role, _, _ in specs)
        x_in = [x.index_select(-1, index) for role, _, index in specs if role == "in"]
        ctx.save_for_backward(x if needs_x else None, *x_in)
        return y.clone()  # a clone, not y itself: an in-place edit downstream stays legal

    @staticmethod
    def backward(ctx, grad_y: Float[Tensor, "*batch d_out"]) -> tuple:
        x, *x_in = ctx.saved_tensors
        g = grad_y.reshape(-1, grad_y.shape[-1])
        x2 = x.reshape(-1, x.shape[-1]) if x is not None else None
        grads, n_in = [], 0
        for role, conv1d, index in ctx.specs:
            if role == "bias":
                grads.append(g[:, index].sum(0))
            elif role == "out":  # xᵀ g[:, J], the operand order of the dense mm backward
                grad = x2.T @ g[:, index]
                grads.append(grad if conv1d else grad.T)
            else:  # x[:, J]ᵀ g
                grad = x_in[n_in].reshape(-1, len(index)).T @ g
                n_in += 1
                grads.append(grad if conv1d else grad.T)
        return (grad_y, None, None, *grads)


def _slice_hook(slices: list[TrainableSlice]):
    """Forward hook of one module: route its output through ``_SliceGrad`` for its slices."""
    specs = tuple((s.role, s.conv1d, s.index) for s in slices)
    params = [s.param for s in slices]

    def hook(module: nn.Module, inputs: tuple, output: Float[Tensor, "..."]) -> Float[Tensor, "..."] | None:
        if not torch.is_grad_enabled():
            return None  # evaluation: the weights already hold the slices
        return _SliceGrad.apply(output, inputs[0].detach(), specs, *params)

    return hook


def make_slices(model, neurons: NeuronSet) -> list[TrainableSlice]:
    """The trainable slices of ``neurons`` (not yet attached): one per parameter tensor and layer."""
    geometry = NeuronGeometry.of(model)
    owners = _owners(model)
    slices: list[TrainableSlice] = []
    for layer in neurons.layers():
        for s in geometry.slices(model, layer):
            module, attr = owners[id(s.param)]
            index = neurons.indices(layer).to(s.param.device)
            role = _role(module, attr, s.dim)
            value = s.param.detach().index_select(s.dim, index).clone()
            slices.append(TrainableSlice(name=f"layer {layer} {s.name}", param=nn.Parameter(value), target=s.param,
                                         dim=s.dim, index=index, role=role, conv1d=_is_conv1d(module)))
    return slices


class NeuronSlices:
    """Context manager: inside it, only ``params`` (the neurons' slices) are trainable.

    On entry every model parameter gets ``requires_grad=False`` and each module holding slices a
    forward hook (``_SliceGrad``); ``write_back()`` copies the slices into the model's weights
    (call it after each optimizer step). On exit (also after an exception) the slices are written
    back one last time, the hooks removed and the ``requires_grad`` flags restored.
    """

    def __init__(self, model, neurons: NeuronSet) -> None:
        self.model = model
        self.slices = make_slices(model, neurons)
        self._handles: list = []
        self._flags: list[tuple[nn.Parameter, bool]] = []

    @property
    def params(self) -> list[nn.Parameter]:
        return [s.param for s in self.slices]

    @property
    def n_entries(self) -> int:
        """Trainable entries: ``Σ numel(S)`` (an exact integer)."""
        return sum(s.param.numel() for s in self.slices)

    def __enter__(self) -> NeuronSlices:
        owners = _owners(self.model)
        self._flags = [(p, p.requires_grad) for p in unique_parameters(self.model)]
        by_module: dict[int, tuple[nn.Module, list[TrainableSlice]]] = {}
        try:
            for p, _ in self._flags:
                p.requires_grad_(False)
            for s in self.slices:
                module = owners[id(s.target)][0]
                by_module.setdefault(id(module), (module, []))[1].append(s)
            for module, slices in by_module.values():
                self._handles.append(module.register_forward_hook(_slice_hook(slices)))
        except BaseException:
            self._restore()
            raise
        return self

    def write_back(self) -> None:
        for s in self.slices:
            s.write_back()

    def _restore(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for p, flag in self._flags:
            p.requires_grad_(flag)
            p.grad = None

    def __exit__(self, *exc: object) -> None:
        try:
            self.write_back()
        finally:
            self._restore()
