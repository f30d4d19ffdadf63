"""Everything about a model's parameter state, in one place.

- ``eval_mode``, ``frozen_parameters``, ``restored_after``: context managers that change the model
  inside a block and put it back exactly on exit (also after an exception); ``set_training``: a
  fast ``model.train(mode)``;
- ``unique_parameters``: the parameters without repeats (tied embeddings once);
- ``model_fingerprint``: the identity of the weights **and** the tokenizer + chat template (a cache
  key: any training step or edited weight changes it);
- ``model_identity``: the identity of the architecture and tokenizer only (which model a
  ``NeuronSet`` belongs to: fine-tuning keeps it, another model of the same shape does not);
- ``attached_hooks``: the hooks on the model now (a result computed under hooks is not the model's).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from transformer_lens import TransformerBridge

# hooks that the libraries themselves install and keep (not a user's edit of the model)
_LIBRARY_HOOKS = ("transformer_lens", "transformers.utils.output_capturing")
_VOLATILE_CONFIG = ("_name_or_path", "transformers_version", "name_or_path", "dtype", "torch_dtype")


def _plain_train_methods() -> set:
    """``train`` methods that do nothing but set ``training`` on the module and its children:
    torch's own; TransformerBridge's (it also sets its unregistered ``original_model``);
    transformers' (it also re-casts kernels, only when ``use_kernels``)."""
    from transformer_lens.model_bridge import TransformerBridge as Bridge
    from transformers import PreTrainedModel

    return {nn.Module.train, Bridge.train, PreTrainedModel.train}


def set_training(model: nn.Module, mode: bool) -> None:
    """``model.train(mode)``, with each module's ``training`` flag set directly instead of through
    the recursive ``train`` calls (0.22-0.28 s per call on SmolLM2's bridge under load, 0.05 s
    this way): every module of the model and of its ``original_model`` (a bridge keeps the wrapped
    model outside its module tree). Falls back to ``model.train(mode)`` when a module's ``train``
    may do more than set the flag (an override not in ``_plain_train_methods``, or kernels)."""
    modules = {id(m): m for root in (model, getattr(model, "original_model", None)) if isinstance(root, nn.Module)
               for m in root.modules()}
    plain = _plain_train_methods()
    if any(type(m).train not in plain or getattr(m, "use_kernels", False) for m in modules.values()):
        model.train(mode)
        return
    for m in modules.values():
        m.__dict__["training"] = mode  # nn.Module keeps the flag in the instance dict (set in __init__)


@contextlib.contextmanager
def eval_mode(model: TransformerBridge) -> Iterator[None]:
    """Eval mode (no dropout) inside the block. Toggling is skipped when the model is already in
    eval mode; otherwise ``set_training`` (the bridge's own ``train()`` walks every module)."""
    if not model.training:
        yield
        return
    set_training(model, False)
    try:
        yield
    finally:
        set_training(model, True)


def unique_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters without repeats (tied embeddings appear once)."""
    seen, params = set(), []
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            params.append(p)
    return params


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Set ``requires_grad=False`` on every parameter; restore the flags on exit (also on error)."""
    params = unique_parameters(model)
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


@contextlib.contextmanager
def restored_after(model: nn.Module) -> Iterator[None]:
    """Within the block the model may be trained or edited; on exit (also after an exception) every
    parameter is copied back from a snapshot taken on entry, bit-exactly, and ``eval()`` is set.
    Lets one loaded model serve every arm of a comparison."""
    params = unique_parameters(model)
    with torch.no_grad():
        snapshot = [p.detach().clone() for p in params]
    try:
        yield
    finally:
        with torch.no_grad():
            for p, saved in zip(params, snapshot, strict=True):
                p.copy_(saved)
        set_training(model, False)


def _config(model: TransformerBridge) -> dict:
    config = dict(getattr(model, "original_model", model).config.to_dict())
    for volatile in _VOLATILE_CONFIG:
        config.pop(volatile, None)
    return config


def tokenizer_digest(tokenizer) -> str:
    """Digest of what turns text into ids: the vocabulary, special tokens and the chat template."""
    if tokenizer is None:
        return "no-tokenizer"
    parts = {
        "class": type(tokenizer).__name__,
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": getattr(tokenizer, "chat_template", None),
        "padding_side": getattr(tokenizer, "padding_side", None),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tokenizer_digest_cached(model: TransformerBridge) -> str:
    """The tokenizer digest, computed once per tokenizer object (the vocabulary is 49k entries)."""
    tok = getattr(model, "tokenizer", None)
    cached = getattr(tok, "_nrnlib_digest", None)
    if cached is None:
        cached = tokenizer_digest(tok)
        if tok is not None:
            with contextlib.suppress(AttributeError):
                tok._nrnlib_digest = cached
    return cached


def model_identity(model: TransformerBridge) -> str:
    """Which model this is, whatever its current weights: name, architecture config and tokenizer.

    Fine-tuning keeps the identity; a different model of the same shape has another one. A
    ``NeuronSet`` records it, so a set found on one model is not silently used on another.
    """
    blob = json.dumps([getattr(model.cfg, "model_name", None), _config(model), _tokenizer_digest_cached(model)],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_WORDS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int32}  # element size -> integer word


def _weight_digest(p: torch.Tensor) -> int:
    """The exact sum of a tensor's bits read as integers (its 8/16/32-bit words, int64 accumulator).
    Integer addition is associative, so the result does not depend on the reduction order: not on
    the number of CPU threads, the SIMD width, nor the device; any changed bit changes a word.
    On CPU numpy sums (it widens the words block by block; torch first widens the whole tensor to
    int64): the same integer, about 10x faster (0.07 vs 0.8 s for SmolLM2's embedding, one thread on a
    loaded 2-core machine)."""
    words = p.detach().contiguous().view(_WORDS[p.element_size()])
    if words.device.type == "cpu":
        return int(words.numpy().sum(dtype=np.int64))
    return int(words.sum(dtype=torch.int64))


def model_fingerprint(model: TransformerBridge) -> str:
    """Identity of a model's architecture, tokenizer + chat template, and current weights (a cache key).

    The identity (``model_identity``) plus the dtype and, per parameter tensor, the exact integer sum
    of its bits (``_weight_digest``): any fine-tuning step, even of a few neurons, changes it, so a
    fine-tuned model never reuses a cache entry of its base model, and the same weights give the same
    key whatever the thread count (a float sum's last bits depend on the reduction order).
    """
    with torch.no_grad():
        params = unique_parameters(model)
        weights = [_weight_digest(p) for p in params]
    blob = json.dumps([model_identity(model), str(params[0].dtype), weights], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def attached_hooks(model: nn.Module) -> list[str]:
    """Names of the modules that carry a user's hook now: TransformerLens hook points with forward or
    backward hooks (``model.hooks(...)``, ``deactivate``), and plain torch hooks added to any module
    (``register_forward_hook`` ...), plus ``"<global>"`` for torch's global module hooks. The
    bridge's own internal hooks (functions of ``transformer_lens``, e.g. the layer-norm capture hooks
    it wires on first use, and the output-capturing hooks transformers installs the first time a
    forward asks for attentions or hidden states, e.g. under ``run_with_cache``) are not counted."""
    from torch.nn.modules import module as torch_module

    found = []
    for name, m in model.named_modules():
        if getattr(m, "fwd_hooks", None) or getattr(m, "bwd_hooks", None):
            found.append(name or "<root>")
            continue
        hooks = [*m._forward_hooks.values(), *m._forward_pre_hooks.values(), *m._backward_hooks.values(),
                 *getattr(m, "_backward_pre_hooks", {}).values()]
        if any(not str(getattr(h, "__module__", "") or "").startswith(_LIBRARY_HOOKS) for h in hooks):
            found.append(name or "<root>")
    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        if getattr(torch_module, attr, None):
            found.append("<global>")
            break
    return found
