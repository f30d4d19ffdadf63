"""Sets of MLP neurons: a boolean mask ``[n_layers, d_mlp]`` (Paper A's "task-specific neurons").

A neuron is one MLP hidden unit (``blocks.{l}.mlp.hook_post``, the input of the down projection).
``NeuronSet`` supports set algebra, the overlap measure of Paper A (intersection over union),
per-layer counts, random controls with the same per-layer counts, and safetensors round trips.

A set may record which model it was found on: ``metadata["model"]`` holds
``nrnlib.model_state.model_identity(model)`` (architecture + tokenizer, not the weights: fine-tuning
keeps it). ``check_model`` refuses a set that carries another model's identity, so a same-shape set
from another model is not silently used; ``allow_other_model=True`` on ``deactivate``/``finetune``
overrides it. A set without an identity fits any model of its shape.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import operator
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import SupportsIndex

import torch
from jaxtyping import Bool, Int
from torch import Tensor

MODEL_KEY = "model"  # metadata key of the model identity


RANDOM_MATCHES = ("layer", "total")  # what a random control set keeps of the set it copies


class NeuronSetError(ValueError):
    """A NeuronSet that does not fit what it is used with, or a file that is not a NeuronSet."""


class NeuronIndexError(NeuronSetError, IndexError):
    """A layer or neuron index out of range."""


class NeuronIndexTypeError(NeuronSetError, TypeError):
    """A layer or neuron index that is not an integer (a float would be silently truncated)."""


class OtherModelError(NeuronSetError):
    """A NeuronSet found on another model than the one it is applied to."""


def _index(value: object, what: str) -> int:
    """``value`` as an int index; floats and bools are refused (never truncated)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        truncated = isinstance(value, numbers.Real) and not isinstance(value, bool)
        hint = " (a float would be truncated)" if truncated else ""
        raise NeuronIndexTypeError(f"{what} must be an int, got {value!r} ({type(value).__name__}){hint}") from None


def _identity_of(model_or_identity: object) -> str | None:
    if model_or_identity is None or isinstance(model_or_identity, str):
        return model_or_identity or None
    from nrnlib.model_state import model_identity

    return model_identity(model_or_identity)


@dataclass(eq=False)
class NeuronSet:
    """A set of neurons as a CPU bool mask ``[n_layers, d_mlp]`` (True = in the set).

    ``name`` and ``metadata`` (str -> str, e.g. ``{"k": "0.1", "scope": "global"}``) travel with
    the set through ``save``/``load``; ``metadata["model"]`` is the identity of the model the set
    was found on (``for_model``), or absent. Equality (``==``) compares the masks only.
    """

    mask: Bool[Tensor, "n_layers d_mlp"]
    name: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.mask, Tensor):
            raise TypeError(f"NeuronSet.mask must be a torch.Tensor, got {type(self.mask).__name__}")
        if self.mask.ndim != 2:
            raise ValueError(f"NeuronSet.mask must be 2-D [n_layers, d_mlp], got shape {tuple(self.mask.shape)}")
        if self.mask.dtype != torch.bool:
            raise TypeError(f"NeuronSet.mask must be a bool tensor, got {self.mask.dtype}")
        self.mask = self.mask.detach().to("cpu")
        self.metadata = {str(k): str(v) for k, v in dict(self.metadata).items()}

    # ---- shape ----
    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mask.shape)  # type: ignore[return-value]

    @property
    def n_layers(self) -> int:
        return self.mask.shape[0]

    @property
    def d_mlp(self) -> int:
        return self.mask.shape[1]

    def check_shape(self, n_layers: int, d_mlp: int, what: str = "the model") -> None:
        """Raise ``NeuronSetError`` (a ``ValueError``) unless the mask is ``[n_layers, d_mlp]``."""
        if self.shape != (n_layers, d_mlp):
            raise NeuronSetError(
                f"NeuronSet {self.name or '(unnamed)'} has shape {list(self.shape)} "
                f"but {what} has {n_layers} layers x {d_mlp} MLP neurons"
            )

    @property
    def model_identity(self) -> str | None:
        """Identity of the model the set was found on (``metadata["model"]``), or None."""
        return self.metadata.get(MODEL_KEY) or None

    def for_model(self, model_or_identity) -> NeuronSet:
        """A copy that records the model it belongs to: a model (its ``model_identity``), an identity
        string, or None (forget the identity: the copy then fits any model of its shape)."""
        identity = _identity_of(model_or_identity)
        meta = {k: v for k, v in self.metadata.items() if k not in (MODEL_KEY, "model_name")}
        if identity is not None:
            meta[MODEL_KEY] = identity
            name = getattr(getattr(model_or_identity, "cfg", None), "model_name", None)
            if name:
                meta["model_name"] = str(name)
        return NeuronSet(self.mask.clone(), name=self.name, metadata=meta)

    def check_model(self, model, allow_other_model: bool = False) -> None:
        """Raise ``NeuronSetError`` unless the set fits ``model`` (a TransformerBridge): the same
        shape, and, when the set records a model identity, the same identity (``OtherModelError``;
        ``allow_other_model=True`` accepts a set from another model of the same shape)."""
        self.check_shape(int(model.cfg.n_layers), int(model.cfg.d_mlp), f"model {model.cfg.model_name!r}")
        if allow_other_model or self.model_identity is None:
            return
        identity = _identity_of(model)
        if identity != self.model_identity:
            found = self.metadata.get("model_name")
            raise OtherModelError(
                f"NeuronSet {self.name or '(unnamed)'} was found on another model "
                f"({found + ', ' if found else ''}identity {self.model_identity}) than "
                f"{model.cfg.model_name!r} (identity {identity}): its neuron indices mean other neurons there. "
                "Select neurons on this model, or pass allow_other_model=True if you mean to transfer the set."
            )

    def _check_same_shape(self, other: NeuronSet) -> None:
        if not isinstance(other, NeuronSet):
            raise TypeError(f"Expected a NeuronSet, got {type(other).__name__}")
        if other.shape != self.shape:
            raise ValueError(f"NeuronSet shapes differ: {list(self.shape)} vs {list(other.shape)}")

    # ---- sizes ----
    @property
    def count(self) -> int:
        """Number of neurons in the set."""
        return int(self.mask.sum())

    def __len__(self) -> int:
        return self.count

    @property
    def fraction(self) -> float:
        """``count / (n_layers * d_mlp)``."""
        return self.count / self.mask.numel()

    def counts_per_layer(self) -> Int[Tensor, " n_layers"]:
        return self.mask.sum(dim=1)

    def indices(self, layer: int) -> Int[Tensor, " n"]:
        """Sorted neuron indices selected in ``layer``."""
        layer = _index(layer, "layer")
        if not -self.n_layers <= layer < self.n_layers:
            raise NeuronIndexError(f"layer {layer} out of range for {self.n_layers} layers")
        return self.mask[layer].nonzero().flatten()

    def layers(self) -> list[int]:
        """Layers with at least one selected neuron."""
        return self.counts_per_layer().nonzero().flatten().tolist()

    # ---- set algebra ----
    def _combine(self, other: NeuronSet, mask: Tensor, op: str) -> NeuronSet:
        """The result of a set operation; it keeps the operands' model identity (they must agree)."""
        ids = {i for i in (self.model_identity, other.model_identity) if i is not None}
        if len(ids) > 1:
            raise OtherModelError(
                f"NeuronSets {self.name or '(unnamed)'} and {other.name or '(unnamed)'} were found on different "
                f"models ({' vs '.join(sorted(ids))}); combine sets of one model, or drop the identity of one "
                "with .for_model(None) if you mean to."
            )
        src = self if self.model_identity is not None else other
        return NeuronSet(mask, name=_join(self.name, op, other.name),
                         metadata={k: src.metadata[k] for k in (MODEL_KEY, "model_name") if k in src.metadata})

    def __or__(self, other: NeuronSet) -> NeuronSet:
        self._check_same_shape(other)
        return self._combine(other, self.mask | other.mask, "|")

    def __and__(self, other: NeuronSet) -> NeuronSet:
        self._check_same_shape(other)
        return self._combine(other, self.mask & other.mask, "&")

    def __sub__(self, other: NeuronSet) -> NeuronSet:
        self._check_same_shape(other)
        return self._combine(other, self.mask & ~other.mask, "-")

    def __invert__(self) -> NeuronSet:
        return NeuronSet(~self.mask, name=f"~{self.name}" if self.name else "",
                         metadata={k: self.metadata[k] for k in (MODEL_KEY, "model_name") if k in self.metadata})

    def union(self, *others: NeuronSet) -> NeuronSet:
        out = self
        for other in others:
            out = out | other
        return out

    def intersection(self, *others: NeuronSet) -> NeuronSet:
        out = self
        for other in others:
            out = out & other
        return out

    def digest(self) -> str:
        """A short hash of the mask (which neurons, not the name or metadata): a cache key."""
        return hashlib.sha256(self.mask.numpy().tobytes()).hexdigest()[:16]

    def iou(self, other: NeuronSet) -> float:
        """Overlap of Paper A: ``|A ∩ B| / |A ∪ B|`` (1.0 for two empty sets)."""
        self._check_same_shape(other)
        union = int((self.mask | other.mask).sum())
        if union == 0:
            return 1.0
        return int((self.mask & other.mask).sum()) / union

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NeuronSet):
            return NotImplemented
        return self.shape == other.shape and torch.equal(self.mask, other.mask)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        per_layer = self.counts_per_layer().tolist()
        shown = per_layer if len(per_layer) <= 12 else per_layer[:6] + ["..."] + per_layer[-6:]
        return (
            f"NeuronSet(name={self.name!r}, count={self.count}/{self.mask.numel()} "
            f"({100 * self.fraction:.2f}%), shape={list(self.shape)}, per_layer={shown})"
        )

    # ---- constructors ----
    @classmethod
    def empty(cls, n_layers: int, d_mlp: int, name: str = "") -> NeuronSet:
        return cls(torch.zeros(n_layers, d_mlp, dtype=torch.bool), name=name)

    @classmethod
    def from_indices(
        cls, n_layers: int, d_mlp: int, indices: Mapping[SupportsIndex, Iterable[SupportsIndex]], name: str = ""
    ) -> NeuronSet:
        """A set from ``{layer: [neuron, ...]}``: any integers (``int``, numpy integers, integer tensors;
        a ``range``, an array or a tensor of neurons). Raises ``NeuronIndexError`` (an ``IndexError``) on
        out-of-range entries and ``NeuronIndexTypeError`` (a ``TypeError``) on non-integer ones."""
        n_layers, d_mlp = _index(n_layers, "n_layers"), _index(d_mlp, "d_mlp")
        if n_layers < 1 or d_mlp < 1:
            raise NeuronSetError(f"n_layers and d_mlp must be >= 1, got {n_layers}, {d_mlp}")
        if not isinstance(indices, Mapping):
            raise NeuronIndexTypeError(f"indices must be a mapping {{layer: [neuron, ...]}}, got "
                                       f"{type(indices).__name__}")
        mask = torch.zeros(n_layers, d_mlp, dtype=torch.bool)
        for layer, js in indices.items():
            layer = _index(layer, "layer")
            if not 0 <= layer < n_layers:
                raise NeuronIndexError(f"layer {layer} out of range [0, {n_layers})")
            js = _neuron_indices(js, layer)
            if len(js) and (js.min() < 0 or js.max() >= d_mlp):
                raise NeuronIndexError(f"neuron indices of layer {layer} out of range [0, {d_mlp}): {js.tolist()}")
            mask[layer, js] = True
        return cls(mask, name=name)

    def random_like(self, seed: int = 0, name: str | None = None, match: str = "layer") -> NeuronSet:
        """A uniformly random set of the same size (a control set), deterministic given ``seed``.

        ``match="layer"`` (default): the same number of neurons in every layer as this set (one
        ``torch.Generator``, layers drawn in order). ``match="total"``: the same total number of
        neurons drawn uniformly over all ``n_layers · d_mlp`` neurons (Paper A's "same number of
        randomly selected neurons"), so layers hold ``Hypergeometric`` counts.
        """
        if match not in RANDOM_MATCHES:
            raise ValueError(f"match must be one of {RANDOM_MATCHES}, got {match!r}")
        gen = torch.Generator().manual_seed(int(seed))
        mask = torch.zeros_like(self.mask)
        if match == "total":
            mask.view(-1)[torch.randperm(self.mask.numel(), generator=gen)[: self.count]] = True
        else:
            for layer, n in enumerate(self.counts_per_layer().tolist()):
                if n:
                    mask[layer, torch.randperm(self.d_mlp, generator=gen)[:n]] = True
        tag = "" if match == "layer" else ", total"
        label = name if name is not None else (f"random({self.name}, seed={seed}{tag})" if self.name
                                               else f"random{seed}{tag}")
        meta = {**self.metadata, "random_seed": str(seed), "random_of": self.name, "random_match": match}
        return NeuronSet(mask, name=label, metadata=meta)

    # ---- persistence ----
    def save(self, path: str | os.PathLike) -> Path:
        """Write the mask (``uint8``) and ``name``/``metadata`` to a safetensors file, atomically."""
        from nrnlib.store import save_safetensors_atomic  # not at import time: the store imports model_state

        meta = {"format": "nrnlib.NeuronSet", "name": self.name, "metadata": json.dumps(self.metadata, sort_keys=True)}
        return save_safetensors_atomic(path, {"mask": self.mask.to(torch.uint8)}, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> NeuronSet:
        """Read a set written by ``save``. A missing file raises ``FileNotFoundError``; a file that is
        not a saved NeuronSet raises ``NeuronSetError`` naming the file."""
        from safetensors import safe_open

        if not Path(path).is_file():
            raise FileNotFoundError(f"No NeuronSet file at {path}")
        not_a_set = f"{path} is not a saved NeuronSet (write one with NeuronSet.save)"
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if "mask" not in f.keys():
                    raise NeuronSetError(f"{not_a_set}: it has no 'mask' tensor")
                mask = f.get_tensor("mask")
            metadata = json.loads(meta.get("metadata", "{}"))
        except NeuronSetError:
            raise
        except Exception as err:  # safetensors' own error type is not public
            raise NeuronSetError(f"{not_a_set}: {type(err).__name__}: {err}") from err
        if mask.ndim != 2 or mask.dtype not in (torch.uint8, torch.bool) or not bool(((mask == 0) | (mask == 1)).all()):
            raise NeuronSetError(f"{not_a_set}: its 'mask' is {mask.dtype} {list(mask.shape)}, not a 2-D 0/1 mask")
        if not isinstance(metadata, dict):
            raise NeuronSetError(f"{not_a_set}: its metadata is not a mapping")
        return cls(mask.to(torch.bool), name=meta.get("name", ""), metadata=metadata)


def _neuron_indices(js: object, layer: int) -> Int[Tensor, " n"]:
    """The neuron indices of one layer as a long tensor; floats and bools are refused (not truncated)."""
    if isinstance(js, (str, bytes)) or not isinstance(js, Iterable):
        raise NeuronIndexTypeError(f"neuron indices of layer {layer} must be an iterable of ints, got {js!r}")
    values = js if isinstance(js, Tensor) else list(js)
    if isinstance(values, list):
        for j in values:
            _index(j, f"neuron index of layer {layer}")
        return torch.tensor([operator.index(j) for j in values], dtype=torch.long)
    if values.dtype == torch.bool or values.is_floating_point() or values.is_complex():
        raise NeuronIndexTypeError(f"neuron indices of layer {layer} must be ints, got a {values.dtype} tensor "
                                   "(a float would be truncated)")
    return values.detach().to("cpu", torch.long).flatten()


def _join(a: str, op: str, b: str) -> str:
    return f"({a}{op}{b})" if a and b else ""
