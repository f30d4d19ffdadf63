"""Fine-tune all parameters, or only the parameters of a set of neurons (Paper A's
neuron-level fine-tuning, and NCFT, train only the task-specific neurons).

Neuron j of layer l owns its input slices (W_1 column j: gate/up rows, c_fc column and bias) and
its output slice (W_2 row j: ``down_proj.weight[:, j]``), as ``NeuronGeometry`` describes them.
Neuron-level training is neuron-sparse by default (``nrnlib.sparse``: only the selected slices are
trainable tensors, with gradients and AdamW state); ``mode="masked"`` trains whole tensors with
masked gradients (the dense reference). Both keep every other entry of the model bit-identical.
``training`` + ``Trainer`` are the reusable step loop that ``finetune`` and ``nrnlib.protocol`` drive.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from nrnlib import encoding, losses
from nrnlib.checks import InvalidArgumentError, check_float, check_int
from nrnlib.model_state import unique_parameters
from nrnlib.models import NeuronGeometry
from nrnlib.neurons import NeuronSet
from nrnlib.sparse import NeuronSlices
from nrnlib.tasks import as_task


class NonFiniteLossError(FloatingPointError, ValueError):
    """A training loss that is NaN or infinite: ``finetune`` stops before training on it (also a
    ``ValueError``: the usual cause is a learning rate too large for the model or its dtype)."""


class WeightDecayPrecisionWarning(UserWarning):
    """The per-step weight decay is too small to change weights stored in bf16/fp16."""


@dataclass
class TrainLog:
    """What a ``finetune`` run did: the loss of every step, and how many entries it trained."""

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    n_trainable_entries: int = 0
    wall_s: float = 0.0

    @property
    def first_loss(self) -> float | None:
        """Loss of the first step; None when no step ran (``steps=0``)."""
        return self.losses[0] if self.losses else None

    @property
    def last_loss(self) -> float | None:
        """Loss of the last step; None when no step ran (``steps=0``)."""
        return self.losses[-1] if self.losses else None


def _check_neurons(model, neurons: NeuronSet, allow_other_model: bool, allow_empty: bool = False) -> None:
    """A NeuronSet of this model's shape, found on this model (or ``allow_other_model``), not empty."""
    if not isinstance(neurons, NeuronSet):
        raise TypeError(f"neurons must be a NeuronSet, got {type(neurons).__name__}")
    neurons.check_model(model, allow_other_model=allow_other_model)
    if not allow_empty and neurons.count == 0:
        raise ValueError("the NeuronSet is empty: nothing to train")


def parameter_masks(
    model, neurons: NeuronSet, allow_other_model: bool = False
) -> dict[torch.nn.Parameter, Bool[Tensor, "..."]]:
    """For every parameter tensor holding a selected neuron: a bool mask broadcastable to it
    (size d_mlp along the neuron dimension, 1 elsewhere), True on the selected neurons' slices."""
    _check_neurons(model, neurons, allow_other_model, allow_empty=True)
    geometry = NeuronGeometry.of(model)
    masks: dict[torch.nn.Parameter, Tensor] = {}
    for layer in neurons.layers():
        for s in geometry.slices(model, layer):
            shape = [1] * s.param.ndim
            shape[s.dim] = s.param.shape[s.dim]
            mask = neurons.mask[layer].to(device=s.param.device).reshape(shape)
            if s.param in masks:  # the same tensor listed twice: union of the masks
                mask = masks[s.param] | mask
            masks[s.param] = mask
    return masks


def _count_entries(masks: dict[torch.nn.Parameter, Bool[Tensor, "..."]]) -> int:
    """Entries selected by the masks, in integer arithmetic (never a float or bf16 sum)."""
    return sum(int(m.count_nonzero()) * (p.numel() // m.numel()) for p, m in masks.items())


def trainable_entries(model, neurons: NeuronSet | None = None, allow_other_model: bool = False) -> int:
    """Number of parameter entries ``finetune`` trains: all of them, or the neurons' slices."""
    if neurons is None:
        return sum(p.numel() for p in unique_parameters(model))
    return _count_entries(parameter_masks(model, neurons, allow_other_model))


def _mask_grad(mask: Bool[Tensor, "..."]):
    """Gradient hook: keep the gradient on trained entries, exactly 0 elsewhere (``where``, not a
    product, so a NaN or inf gradient of a frozen entry cannot leak into it: ``inf * 0`` is NaN)."""
    return lambda grad: torch.where(mask, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))


@torch.no_grad()
def _decay_(param: Float[Tensor, "..."], mask: Bool[Tensor, "..."] | None, rate: float) -> None:
    """Decoupled weight decay ``p ← p − rate · p`` on the masked entries only, computed in fp32 and
    rounded once, so frozen entries are bit-identical and bf16/fp16 entries are not rounded to 1·p
    by a factor ``1 − rate`` formed in their own precision."""
    decayed = (param.float() - rate * param.float()).to(param.dtype)
    param.copy_(decayed if mask is None else torch.where(mask, decayed, param))


def _warn_if_decay_below_precision(params: list[Tensor], rate: float) -> None:
    for dtype in sorted({p.dtype for p in params if p.is_floating_point()}, key=str):
        if torch.finfo(dtype).eps > 2 * rate and dtype in (torch.bfloat16, torch.float16):
            warnings.warn(
                f"weight decay lr*weight_decay={rate:.3g} per step is below the resolution of {dtype} weights "
                f"(relative spacing {torch.finfo(dtype).eps:.3g}): rounding cancels most or all of it. Load the "
                "model in float32 (load_model(..., dtype='float32')) or raise lr*weight_decay for it to act.",
                WeightDecayPrecisionWarning, stacklevel=3,
            )


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
                handles.append(p.register_hook(_mask_grad(masks[p])))
        yield trainable
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
            p.grad = None


def _training_items(tasks, n_train: int | None) -> list[tuple[object, dict]]:
    """(task, example) pairs of the tasks' train splits, the first ``n_train`` (>= 1) of each."""
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


MODES = ("sparse", "masked", "full")


def _check_mode(mode: str | None, neurons: NeuronSet | None, where: str) -> str:
    """The training mode: ``None`` means "sparse" for a NeuronSet and "full" without one."""
    if mode is None:
        return "full" if neurons is None else "sparse"
    if mode not in MODES:
        raise InvalidArgumentError(f"{where}: mode must be one of {MODES} or None, got {mode!r}")
    if (mode == "full") != (neurons is None):
        need = "no neurons (neurons=None)" if mode == "full" else "a NeuronSet (neurons=...)"
        raise InvalidArgumentError(f"{where}: mode={mode!r} needs {need}; leave mode=None for the default")
    return mode


class Trainer:
    """One training run in progress: its trainable tensors, AdamW, and the decoupled weight decay.

    ``step(batch)`` is one update on ``losses.answer_loss``: ``L`` forward + backward, then, if ``L``
    is finite, ``p ← p − lr·wd·p`` on the trained entries (fp32, rounded once) and the AdamW step
    (AdamW's own decay is 0); then ``after_step`` (neuron-sparse: write the slices into the model).
    A NaN/inf ``L`` raises ``NonFiniteLossError`` before any update. ``state()`` / ``load_state()``
    copy the trained tensors out and back (the best weights of an early-stopped run). Made by
    :func:`training`; ``nrnlib.protocol`` drives it, ``finetune`` is a fixed number of ``step`` calls.
    """

    def __init__(self, model, params: list[torch.nn.Parameter], lr: float, weight_decay: float,
                 masks: dict | None, n_entries: int, mode: str, after_step=None, where: str = "finetune") -> None:
        self.model, self.params, self.mode, self.where = model, params, mode, where
        self.lr, self.weight_decay = lr, weight_decay
        self.n_trainable_entries = int(n_entries)
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        self.decay = [(p, None if masks is None else masks[p]) for p in params] if weight_decay else []
        self._after_step = after_step
        self.steps = 0

    def step(self, batch: encoding.EncodedBatch, total: int | None = None) -> float:
        """One optimizer step on ``batch``; returns the loss (a float, one host sync)."""
        loss = losses.answer_loss(self.model, batch, share_prefix=True)  # the prompts' common prefix once
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = float(loss.detach())  # one host sync per step, after the backward is queued
        if not math.isfinite(value):  # before any update: nothing is trained on it
            of = f" of {total}" if total is not None else ""
            raise NonFiniteLossError(
                f"{self.where}: the loss at step {self.steps + 1}{of} is {value}; stopped before training on it (the "
                f"{self.steps} step(s) before it were applied). Lower lr (now {self.lr:g}), or check the model's "
                "weights and dtype (fp16 overflows easily)."
            )
        for p, m in self.decay:  # decoupled weight decay, trained entries only
            _decay_(p, m, self.lr * self.weight_decay)
        self.optimizer.step()
        if self._after_step is not None:
            self._after_step()
        self.steps += 1
        return value

    def state(self) -> list[Tensor]:
        """Copies of the trained tensors (slices in sparse mode, whole tensors otherwise)."""
        return [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def load_state(self, state: list[Tensor]) -> None:
        """Put back tensors taken by ``state()`` (into the model's weights too)."""
        for p, saved in zip(self.params, state, strict=True):
            p.copy_(saved)
        if self._after_step is not None:
            self._after_step()


@contextlib.contextmanager
def training(
    model, neurons: NeuronSet | None = None, *, lr: float, weight_decay: float = 0.0, mode: str | None = None,
    allow_other_model: bool = False, where: str = "finetune",
) -> Iterator[Trainer]:
    """A :class:`Trainer` for ``model`` in train mode; on exit (also after an exception) flags, hooks
    and gradients are restored and ``model.eval()`` is set; the trained weights stay in the model.

    ``mode``: "full" (every parameter, ``neurons=None``), "masked" (whole MLP tensors trainable, the
    gradient zeroed outside the neurons with ``torch.where``) or "sparse" (only the neurons' slices are
    tensors with gradients and AdamW state: ``nrnlib.sparse``); ``None`` picks "sparse" for a
    NeuronSet and "full" without one. Masked and sparse train the same entries with the same updates.
    """
    mode = _check_mode(mode, neurons, where)
    lr = check_float(lr, "lr", positive=True, where=where)
    weight_decay = check_float(weight_decay, "weight_decay", minimum=0.0, where=where)
    if neurons is not None:
        _check_neurons(model, neurons, allow_other_model)
    with contextlib.ExitStack() as stack:
        if mode == "sparse":
            slices = stack.enter_context(NeuronSlices(model, neurons))
            trainer = Trainer(model, slices.params, lr, weight_decay, None, slices.n_entries, mode,
                              after_step=slices.write_back, where=where)
        else:
            masks = parameter_masks(model, neurons, allow_other_model) if mode == "masked" else None
            params = stack.enter_context(_training_setup(model, masks))
            n = trainable_entries(model) if masks is None else _count_entries(masks)
            trainer = Trainer(model, params, lr, weight_decay, masks, n, mode, where=where)
        model.train()
        try:
            yield trainer
        finally:
            model.eval()
            trainer.optimizer.zero_grad(set_to_none=True)


def _as_tasks(tasks, where: str = "finetune") -> list:
    tasks = [as_task(t) for t in tasks] if isinstance(tasks, (list, tuple)) else [as_task(tasks)]
    if not tasks:
        raise ValueError(f"{where} needs at least one task")
    return tasks


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
    allow_other_model: bool = False,
    mode: str | None = None,
) -> TrainLog:
    """Train ``model`` in place on the answer loss of ``tasks``' training examples, ``steps`` steps.

    ``neurons=None`` trains every parameter; a ``NeuronSet`` trains only the input and output
    slices of its neurons, by default neuron-sparse (``mode="sparse"``, ``nrnlib.sparse``): the
    slices are small trainable tensors written into the frozen weights after each step, so weight
    gradients and AdamW state exist for them only. ``mode="masked"`` is the dense reference: only
    tensors holding selected neurons get ``requires_grad``, and a gradient hook sets their gradient
    to exactly 0 outside the neuron mask (``torch.where``, so even a NaN gradient cannot reach a
    frozen entry): frozen entries have zero gradient from step 1, hence zero AdamW moments and zero
    updates. Both modes train the same entries with equal updates (tested to 1e-6), and every frozen
    entry stays bit-identical. AdamW runs with ``weight_decay=0`` and the decoupled decay is applied
    by hand to trained entries only (``p ← p − lr · wd · p`` before each step, as AdamW does,
    computed in fp32 and rounded once), in bf16 too. In bf16/fp16 a decay ``lr · wd`` below the
    weights' resolution is mostly rounded away: ``finetune`` then warns
    (``WeightDecayPrecisionWarning``). Hooks and ``requires_grad`` flags are restored afterwards.

    ``tasks``: a task, a task name, or a list of them. The set must have been found on this model
    (``NeuronSet.check_model``) unless ``allow_other_model=True``. Bad arguments (a float
    ``batch_size``, ``n_train < 1``, a non-finite ``lr`` or ``weight_decay``, an unknown ``mode``)
    raise nrnlib errors (``ValueError``/``TypeError`` subclasses) before anything is trained. A NaN
    or infinite loss stops training with ``NonFiniteLossError`` naming the step, before that step's
    update (the model keeps the updates of the steps before it).

    Data: the union of the tasks' train splits (the first ``n_train`` of each, if given), shuffled
    by ``seed`` (a ``torch.Generator``, reshuffled each epoch) and cycled; the same seed gives the
    same batches whichever parameters are trained. Loss: ``losses.answer_loss`` (mean token
    cross-entropy over the batch's answer tokens). ``model.train()`` during, ``model.eval()`` after.
    For training to convergence on a dev split with lr selection, see ``nrnlib.protocol``.
    """
    tasks = _as_tasks(tasks)
    steps = check_int(steps, "steps", minimum=0, where="finetune")
    batch_size = check_int(batch_size, "batch_size", minimum=1, where="finetune")
    n_train = check_int(n_train, "n_train", minimum=1, where="finetune", none_ok=True)
    seed = check_int(seed, "seed", where="finetune")
    lr = check_float(lr, "lr", positive=True, where="finetune")
    weight_decay = check_float(weight_decay, "weight_decay", minimum=0.0, where="finetune")
    mode = _check_mode(mode, neurons, "finetune")
    if neurons is not None:
        _check_neurons(model, neurons, allow_other_model)  # before anything is encoded

    encoded = _encode_items(model, _training_items(tasks, n_train))
    device = next(iter(model.parameters())).device
    log = TrainLog()
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # dropout, where a model has it
        with training(model, neurons, lr=lr, weight_decay=weight_decay, mode=mode,
                      allow_other_model=allow_other_model) as trainer:
            log.n_trainable_entries = trainer.n_trainable_entries
            if trainer.decay and steps:
                _warn_if_decay_below_precision([p for p, _ in trainer.decay], lr * weight_decay)
            bar = tqdm(range(steps), desc="finetune", disable=not progress, leave=False)
            batches = batch_stream(model, encoded, batch_size, seed)
            running = float("nan")
            for _ in bar:
                log.losses.append(trainer.step(next(batches), total=steps))
                log.steps += 1
                running = 0.9 * running + 0.1 * log.losses[-1] if log.steps > 1 else log.losses[-1]
                bar.set_postfix(loss=f"{running:.4f}")  # exponential running mean
    log.wall_s = time.perf_counter() - start
    return log


def task_batch_stream(model, encoded_by_task: list[list[tuple[list[int], list[int]]]], batch_size: int,
                      seed: int) -> Iterator[encoding.EncodedBatch]:
    """Endless batches of one task each, the tasks in turn (step s draws from task ``s mod K``):
    each task's own ``batch_stream`` (seeded with ``(seed, task index)``), so every row of a step
    shares its task's prompt prefix (``losses`` runs it once) and each task gets 1/K of the steps."""
    if not encoded_by_task or not all(encoded_by_task):
        raise ValueError("task_batch_stream needs at least one task, each with training examples")
    streams = [batch_stream(model, enc, batch_size, int(seed) * 1_000_003 + i) for i, enc in enumerate(encoded_by_task)]
    while True:
        for stream in streams:
            yield next(stream)


def batch_stream(model, encoded: list[tuple[list[int], list[int]]], batch_size: int,
                 seed: int) -> Iterator[encoding.EncodedBatch]:
    """Endless training batches on the model's device: ``batch_size`` examples each, in the order
    of ``_order(len(encoded), seed)`` (a seeded permutation per epoch), so a seed fixes the batches
    whichever parameters are trained."""
    pad = encoding.pad_id(model.tokenizer)
    device = next(iter(model.parameters())).device
    order = _order(len(encoded), seed)
    while True:
        chosen = [encoded[next(order)] for _ in range(batch_size)]
        yield encoding.pad_batch([c[0] for c in chosen], [c[1] for c in chosen], pad).to(device)
