"""Sets of MLP neurons: a boolean mask ``[n_layers, d_mlp]`` (Paper A's "task-specific neurons").

A neuron is one MLP hidden unit (``blocks.{l}.mlp.hook_post``, the input of the down projection).
``NeuronSet`` supports set algebra, the overlap measure of Paper A (intersection over union),
per-layer counts, random controls with the same per-layer counts, and safetensors round trips.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Bool, Int
from torch import Tensor


@dataclass(eq=False)
class NeuronSet:
    """A set of neurons as a CPU bool mask ``[n_layers, d_mlp]`` (True = in the set).

    ``name`` and ``metadata`` (str -> str, e.g. ``{"k": "0.1", "scope": "global"}``) travel with
    the set through ``save``/``load``. Equality (``==``) compares the masks only.
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
        """Raise ``ValueError`` unless the mask is ``[n_layers, d_mlp]``."""
        if self.shape != (n_layers, d_mlp):
            raise ValueError(
                f"NeuronSet {self.name or '(unnamed)'} has shape {list(self.shape)} "
                f"but {what} has {n_layers} layers x {d_mlp} MLP neurons"
            )

    def check_model(self, model) -> None:
        """Raise ``ValueError`` unless the set fits ``model`` (a TransformerBridge)."""
        self.check_shape(int(model.cfg.n_layers), int(model.cfg.d_mlp), f"model {model.cfg.model_name!r}")

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
        if not -self.n_layers <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range for {self.n_layers} layers")
        return self.mask[layer].nonzero().flatten()

    def layers(self) -> list[int]:
        """Layers with at least one selected neuron."""
        return self.counts_per_layer().nonzero().flatten().tolist()

    # ---- set algebra ----
    def __or__(self, other: NeuronSet) -> NeuronSet:
        self._check_same_shape(other)
        return NeuronSet(self.mask | other.mask, name=_join(self.name, "|", other.name))

    def __and__(self, other: NeuronSet) -> NeuronSet:
        self._check_same_shape(other)
        return NeuronSet(self.mask & other.mask, name=_join(self.name, "&", other.name))

    def __sub__(self, other: NeuronSet) -> NeuronSet:
        self._check_same_shape(other)
        return NeuronSet(self.mask & ~other.mask, name=_join(self.name, "-", other.name))

    def __invert__(self) -> NeuronSet:
        return NeuronSet(~self.mask, name=f"~{self.name}" if self.name else "")

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
        cls, n_layers: int, d_mlp: int, indices: Mapping[int, Iterable[int]], name: str = ""
    ) -> NeuronSet:
        """A set from ``{layer: [neuron, ...]}``; raises ``IndexError`` on out-of-range entries."""
        if n_layers < 1 or d_mlp < 1:
            raise ValueError(f"n_layers and d_mlp must be >= 1, got {n_layers}, {d_mlp}")
        mask = torch.zeros(n_layers, d_mlp, dtype=torch.bool)
        for layer, js in indices.items():
            layer = int(layer)
            if not 0 <= layer < n_layers:
                raise IndexError(f"layer {layer} out of range [0, {n_layers})")
            js = torch.as_tensor(list(js), dtype=torch.long)
            if len(js) and (js.min() < 0 or js.max() >= d_mlp):
                raise IndexError(f"neuron indices of layer {layer} out of range [0, {d_mlp}): {js.tolist()}")
            mask[layer, js] = True
        return cls(mask, name=name)

    def random_like(self, seed: int = 0, name: str | None = None) -> NeuronSet:
        """A uniformly random set with the same number of neurons in every layer (a control set).

        Deterministic given ``seed`` (one ``torch.Generator``, layers drawn in order).
        """
        gen = torch.Generator().manual_seed(int(seed))
        mask = torch.zeros_like(self.mask)
        for layer, n in enumerate(self.counts_per_layer().tolist()):
            if n:
                mask[layer, torch.randperm(self.d_mlp, generator=gen)[:n]] = True
        label = name if name is not None else (f"random({self.name}, seed={seed})" if self.name else f"random{seed}")
        meta = {**self.metadata, "random_seed": str(seed), "random_of": self.name}
        return NeuronSet(mask, name=label, metadata=meta)

    # ---- persistence ----
    def save(self, path: str | os.PathLike) -> Path:
        """Write the mask (``uint8``) and ``name``/``metadata`` to a safetensors file, atomically."""
        from nrnlib.results import save_safetensors_atomic  # not at import time: results pulls in plotting

        meta = {"format": "nrnlib.NeuronSet", "name": self.name, "metadata": json.dumps(self.metadata, sort_keys=True)}
        return save_safetensors_atomic(path, {"mask": self.mask.to(torch.uint8)}, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> NeuronSet:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "mask" not in f.keys():
                raise ValueError(f"{path} is not a saved NeuronSet (no 'mask' tensor)")
            mask = f.get_tensor("mask")
        return cls(mask.to(torch.bool), name=meta.get("name", ""), metadata=json.loads(meta.get("metadata", "{}")))


def _join(a: str, op: str, b: str) -> str:
    return f"({a}{op}{b})" if a and b else ""
