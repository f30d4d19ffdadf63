"""Fine-tune all parameters, or only the parameters of a set of neurons (Paper A's
neuron-level fine-tuning, and NCFT, train only the task-specific neurons).

Neuron j of layer l owns its input slices (W_1 column j: gate/up rows, c_fc column and bias) and
its output slice (W_2 row j: ``down_proj.weight[:, j]``), as ``NeuronGeometry`` describes them.
Masked training keeps every other entry of the model bit-identical (see ``finetune``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from nrnlib import encoding, losses
from nrnlib.models import NeuronGeometry, unique_parameters
from nrnlib.neurons import NeuronSet


@dataclass
class TrainLog:
    """What a ``finetune`` run did: the loss of every step, and how many entries it trained."""

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    n_trainable_entries: int = 0
    wall_s: float = 0.0

    @property
    def first_loss(self) -> float:
        return self.losses[0]

    @property
    def last_loss(self) -> float:
        return self.losses[-1]


def parameter_masks(model, neurons: NeuronSet) -> dict[torch.nn.Parameter, torch.Tensor]:
    """For every parameter tensor holding a selected neuron: a 0/1 mask broadcastable to it
    (size d_mlp along the neuron dimension, 1 elsewhere), 1 on the selected neurons' slices."""
    if not isinstance(neurons, NeuronSet):
        raise TypeError(f"neurons must be a NeuronSet, got {type(neurons).__name__}")
    neurons.check_model(model)
    geometry = NeuronGeometry.of(model)
    masks: dict[torch.nn.Parameter, torch.Tensor] = {}
    for layer in neurons.layers():
        for s in geometry.slices(model, layer):
            shape = [1] * s.param.ndim
            shape[s.dim] = s.param.shape[s.dim]
            mask = neurons.mask[layer].to(device=s.param.device, dtype=s.param.dtype).reshape(shape)
            if s.param in masks:  # the same tensor listed twice: union of the masks
                mask = torch.maximum(masks[s.param], mask)
            masks[s.param] = mask
    return masks


def trainable_entries(model, neurons: NeuronSet | None = None) -> int:
    """Number of parameter entries ``finetune`` trains: all of them, or the neurons' slices."""
    if neurons is None:
        return sum(p.numel() for p in unique_parameters(model))
    total = 0
    for param, mask in parameter_masks(model, neurons).items():
        total += int(mask.sum()) * (param.numel() // mask.numel())
    return total


@contextlib.contextmanager
def _training_setup(model, masks: dict | None) -> Iterator[list[torch.nn.Parameter]]:
    """Set requires_grad and gradient-mask hooks; restore flags and remove hooks afterwards."""
    params = unique_parameters(model)
    flags = [p.requires_grad for p in params]
    handles = []
    try:
        if masks is None:
            trainable = params
            for p in params:
                p.requires_grad_(True)
        else:
            ids = {id(p) for p in masks}
            trainable = [p for p in params if id(p) in ids]
            for p in params:
                p.requires_grad_(id(p) in ids)
            for p in trainable:
                handles.append(p.register_hook(lambda g, m=masks[p]: g * m))
        yield trainable
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
            p.grad = None


def _training_items(tasks, n_train: int | None) -> list[tuple[object, dict]]:
    items = []
    for task in tasks:
        train = list(task.split("train"))
        if n_train is not None:
            train = train[:n_train]
        if not train:
            raise ValueError(f"Task {task.name!r} has no training examples")
        items.extend((task, ex) for ex in train)
    return items


def _encode_items(model, items) -> list[tuple[list[int], list[int]]]:
    out = []
    for task, ex in items:
        prompt, answer = encoding.example_ids(model, task, ex)
        if not answer:
            raise ValueError(f"A training example of task {task.name!r} has no answer tokens")
        out.append((prompt, answer))
    return out


def _order(n: int, seed: int) -> Iterator[int]:
    """Example indices: a seeded permutation per epoch, epochs one after another (cycled)."""
    gen = torch.Generator().manual_seed(int(seed))
    while True:
        yield from torch.randperm(n, generator=gen).tolist()


def finetune(
    model,
    tasks,
    neurons: NeuronSet | None = None,
    steps: int = 100,
    lr: float = 1e-4,
    batch_size: int = 8,
    weight_decay: float = 0.0,
    seed: int = 0,
    n_train: int | None = None,
    progress: bool = True,
) -> TrainLog:
    """Train ``model`` in place on the answer loss of ``tasks``' training examples.

    ``neurons=None`` trains every parameter; a ``NeuronSet`` trains only the input and output
    slices of its neurons. Masked training: only tensors holding selected neurons get
    ``requires_grad``, and a gradient hook multiplies their gradient by the 0/1 neuron mask, so
    frozen entries have zero gradient from step 1, hence zero AdamW moments and zero updates.
    AdamW runs with ``weight_decay=0`` and the decoupled decay is applied by hand to trained
    entries only (``p ← p · (1 − lr · wd · mask)`` before each step, as AdamW does), so every
    frozen entry stays bit-identical. Hooks and ``requires_grad`` flags are restored afterwards.

    Data: the union of the tasks' train splits (the first ``n_train`` of each, if given), shuffled
    by ``seed`` (a ``torch.Generator``, reshuffled each epoch) and cycled; the same seed gives the
    same batches whichever parameters are trained. Loss: ``losses.answer_loss`` (mean token
    cross-entropy over the batch's answer tokens). ``model.train()`` during, ``model.eval()`` after.
    """
    tasks = list(tasks) if isinstance(tasks, (list, tuple)) else [tasks]
    if not tasks:
        raise ValueError("finetune needs at least one task")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if lr <= 0 or weight_decay < 0:
        raise ValueError(f"need lr > 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}")
    masks = parameter_masks(model, neurons) if neurons is not None else None
    if masks is not None and not masks:
        raise ValueError("the NeuronSet is empty: nothing to train")

    encoded = _encode_items(model, _training_items(tasks, n_train))
    pad = encoding.pad_id(model.tokenizer)
    device = next(iter(model.parameters())).device
    order = _order(len(encoded), seed)

    log = TrainLog(n_trainable_entries=trainable_entries(model, neurons))
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # dropout, where a model has it
        with _training_setup(model, masks) as trainable:
            optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
            decay = [(p, masks[p] if masks is not None else None) for p in trainable] if weight_decay else []
            model.train()
            try:
                bar = tqdm(range(steps), desc="finetune", disable=not progress, leave=False)
                running = float("nan")
                for _ in bar:
                    chosen = [encoded[next(order)] for _ in range(batch_size)]
                    batch = encoding.pad_batch([c[0] for c in chosen], [c[1] for c in chosen], pad).to(device)
                    loss = losses.answer_loss(model, batch)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    with torch.no_grad():
                        for p, m in decay:  # decoupled weight decay, trained entries only
                            p.mul_(1 - lr * weight_decay * m) if m is not None else p.mul_(1 - lr * weight_decay)
                    optimizer.step()
                    log.losses.append(float(loss.detach()))
                    log.steps += 1
                    running = 0.9 * running + 0.1 * log.losses[-1] if log.steps > 1 else log.losses[-1]
                    bar.set_postfix(loss=f"{running:.4f}")  # exponential running mean
            finally:
                model.eval()
                optimizer.zero_grad(set_to_none=True)
    log.wall_s = time.perf_counter() - start
    return log


@contextlib.contextmanager
def restored_after(model) -> Iterator[None]:
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
        model.eval()
