"""Deactivate a set of neurons (Paper A's deactivation experiments).

Two equivalent ways to silence neuron j of layer l:

- ``mode="activation"``: multiply ``blocks.{l}.mlp.hook_post`` (the neuron outputs ω) by a 0/1
  keep mask, through TransformerLens hooks;
- ``mode="parameter"``: zero the neuron's output slice (W_2 row j, HF ``down_proj.weight[:, j]`` or
  GPT-2 ``c_proj.weight[j]``) and, with ``include_inputs``, its input slices too (W_1 column j:
  gate/up rows, biases). Exactly the zeroed entries are saved and written back, bit for bit, on exit.

Both give the same logits (the neuron's contribution ω_j · W_2[j] vanishes either way).

``deactivate(...)`` checks its arguments at once and returns a ``Deactivation``, a context manager
that changes the model only while a ``with`` block runs. Calling it without ``with`` would do
nothing, so a ``Deactivation`` that is garbage-collected without ever being entered emits a
``DeactivationNotEnteredWarning`` pointing at the line that created it.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from types import FrameType

import torch
from jaxtyping import Bool
from torch import Tensor

from nrnlib.models import NeuronGeometry
from nrnlib.neurons import NeuronSet

MODES = ("activation", "parameter")


class DeactivationNotEnteredWarning(UserWarning):
    """``deactivate(...)`` was called without ``with``: the neurons were never deactivated."""


class DeactivationError(RuntimeError):
    """A ``Deactivation`` entered while it is already active (nested ``with`` on one object)."""


def _keep_hook(keep: Bool[Tensor, " d_mlp"]):
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


class Deactivation:
    """What ``deactivate`` returns: use it as ``with deactivate(model, neurons): ...``.

    Nothing changes until the ``with`` block is entered; on exit the model is restored exactly. The
    object can be entered again after it exits (not while it is active). If it is garbage-collected
    without ever being entered, it warns (``DeactivationNotEnteredWarning``): the call did nothing.
    """

    def __init__(self, model, neurons: NeuronSet, mode: str, include_inputs: bool, allow_other_model: bool,
                 origin: tuple[str, int] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(neurons, NeuronSet):
            raise TypeError(f"neurons must be a NeuronSet, got {type(neurons).__name__}")
        if not isinstance(include_inputs, bool):
            raise TypeError(f"include_inputs must be True or False, got {include_inputs!r}")
        if mode == "activation" and include_inputs:
            raise ValueError("include_inputs applies to mode='parameter' only")
        neurons.check_model(model, allow_other_model=allow_other_model)
        self.model, self.neurons, self.mode, self.include_inputs = model, neurons, mode, include_inputs
        self._origin = origin
        self._stack: contextlib.ExitStack | None = None
        self._entered = False  # set last: a failed __init__ never warns

    def __enter__(self) -> Deactivation:
        if self._stack is not None:
            raise DeactivationError("this deactivate(...) block is already active; create a new one to nest")
        self._entered = True
        stack = contextlib.ExitStack()
        if self.mode == "activation":
            stack.enter_context(_deactivate_activations(self.model, self.neurons))
        else:
            stack.enter_context(_deactivate_parameters(self.model, self.neurons, self.include_inputs))
        self._stack = stack
        return self

    def __exit__(self, *exc) -> bool:
        stack, self._stack = self._stack, None
        return bool(stack.__exit__(*exc)) if stack is not None else False

    @property
    def active(self) -> bool:
        return self._stack is not None

    def __repr__(self) -> str:
        state = "active" if self.active else "inactive: use `with deactivate(...):`"
        return f"<Deactivation of {self.neurons.count} neurons, mode={self.mode!r} ({state})>"

    def __del__(self) -> None:
        if getattr(self, "_entered", True):
            return
        with contextlib.suppress(Exception):  # never raise from a finalizer (e.g. at interpreter exit)
            filename, lineno = self._origin or ("<unknown>", 0)
            warnings.warn_explicit(
                "deactivate(...) was called without `with`, so no neuron was deactivated. "
                "Write `with deactivate(model, neurons): ...`.",
                DeactivationNotEnteredWarning, filename, lineno,
            )


def deactivate(
    model, neurons: NeuronSet, mode: str = "activation", include_inputs: bool = False,
    allow_other_model: bool = False,
) -> Deactivation:
    """Within the block, ``neurons`` of ``model`` output zero (see the module docstring)::

        with deactivate(model, neurons, mode="activation"):
            score = evaluate(model, task)

    ``mode="activation"`` (hooks on ``hook_post``, only the layers with selected neurons) or
    ``"parameter"`` (zero W_2 rows; also W_1 columns and biases when ``include_inputs``). The model
    is restored exactly on exit, also after an exception. Arguments are checked at the call; the
    set must fit the model (shape, and the model it was found on, unless ``allow_other_model``).
    """
    caller = _past_wrappers(sys._getframe(1))
    return Deactivation(model, neurons, mode, include_inputs, allow_other_model,
                        origin=(caller.f_code.co_filename, caller.f_lineno))


_WRAPPER_MODULES = ("jaxtyping", "beartype")  # runtime type checkers that wrap nrnlib's functions (tests)


def _past_wrappers(frame: FrameType) -> FrameType:
    """``frame``, or the first frame above it that is not a runtime type checker's wrapper (the test
    suite runs nrnlib under jaxtyping + beartype, ``NRN_TYPECHECK=1``): the caller's own line."""
    while frame.f_back is not None and frame.f_globals.get("__name__", "").partition(".")[0] in _WRAPPER_MODULES:
        frame = frame.f_back
    return frame
