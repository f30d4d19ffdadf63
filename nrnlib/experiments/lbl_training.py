"""How notebook 07's models are trained and whether they converged.

- ``train_lora_to_convergence``: a LoRA adapter trained under ``nrnlib.protocol`` (a dev split carved
  from each task's train split, the dev loss before training and after every epoch, early stopping
  after ``patience`` epochs without improvement, the best adapter merged) with Paper B's cosine
  schedule over the epoch cap (``cosine_lora_training``);
- ``convergence_table`` and ``lora_runs``: where each model stopped and its dev curve, from
  ``layer_by_layer.mossa_states(..., protocol=...)``;
- ``loss_table`` and ``loss_summary``: the training loss curves and the "still falling" rule.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from nrnlib.lora import LoraSettings, cosine_factor, lora_training
from nrnlib.protocol import Protocol, dev_split, train_to_convergence
from nrnlib.tasks import get_task


class _ScheduledLora:
    """A ``protocol.TrainerLike``: a ``lora.LoraTrainer`` whose lr follows ``schedule`` (stepped after
    every optimizer step)."""

    def __init__(self, trainer, schedule: torch.optim.lr_scheduler.LRScheduler) -> None:
        self.trainer, self.schedule = trainer, schedule
        self.n_trainable_entries = trainer.n_trainable_entries

    def step(self, batch, total: int | None = None) -> float:
        value = self.trainer.step(batch, total=total)
        self.schedule.step()
        return value

    def state(self) -> list[Tensor]:
        return self.trainer.state()

    def load_state(self, state: Sequence[Tensor]) -> None:
        self.trainer.load_state(state)


def cosine_lora_training(settings: LoraSettings, seed: int, total: int):  # noqa: ANN201 - a factory
    """``lora.lora_training(settings, seed)`` (a fresh adapter, merged when the block ends) with Paper
    B's schedule over the step cap: ``lr_t = lr · cosine_factor(t, total, settings.warmup_steps)`` at
    optimizer step t = 0, 1, ... (``lr`` is the protocol's). A run stopped early on its dev loss ends
    before the lr reaches 0, as a Hugging Face Trainer with a cosine schedule and early stopping does."""
    total = int(total)

    @contextlib.contextmanager
    def factory(model, lr: float, weight_decay: float) -> Iterator[_ScheduledLora]:
        with lora_training(settings, seed)(model, lr=lr, weight_decay=weight_decay) as trainer:
            schedule = torch.optim.lr_scheduler.LambdaLR(
                trainer.optimizer, lambda t: cosine_factor(t, total, settings.warmup_steps))
            yield _ScheduledLora(trainer, schedule)

    return factory


def lora_run_protocol(protocol: Protocol, lora: LoraSettings, n_examples: int) -> Protocol:
    """The protocol of one LoRA model over ``n_examples`` training examples: ``lora``'s batch size and
    weight decay, the dev loss after every epoch (``eval_every = ceil(n / batch_size)`` steps), the cap
    ``lora.total_steps(n)`` (``epochs`` epochs); patience, dev size and the rest from ``protocol``."""
    per_epoch = math.ceil(n_examples / lora.batch_size)
    return replace(protocol, batch_size=lora.batch_size, weight_decay=lora.weight_decay, eval_every=per_epoch,
                   max_steps=lora.total_steps(n_examples))


def protocol_items(tasks, protocol: Protocol) -> list[tuple[object, dict]]:
    """(task, example) pairs a protocol run trains on: each task's dev-split train examples."""
    return [(t, ex) for t in tasks
            for ex in dev_split(t, protocol.dev_size, protocol.n_train, protocol.max_dev_fraction).train]


def lora_run(tasks, lora: LoraSettings, protocol: Protocol) -> Protocol:
    """``lora_run_protocol`` over the examples ``tasks`` train on under ``protocol`` (their dev-split
    train examples). Idempotent: the run protocol of a run protocol is itself."""
    return lora_run_protocol(protocol, lora, len(protocol_items(tasks, protocol)))


def train_lora_to_convergence(model, tasks, lora: LoraSettings, protocol: Protocol, seed: int = 0):
    """Train a LoRA adapter on ``tasks`` under ``lora_run`` (dev loss per epoch, early stopping, the
    best adapter merged into ``model`` in place) at ``lora.lr`` with the cosine schedule over the cap;
    returns the ``protocol.Curve``. Call it inside ``restored_after(model)``."""
    tasks = [get_task(t) if isinstance(t, str) else t for t in tasks]
    run = lora_run(tasks, lora, protocol)
    return train_to_convergence(model, tasks, run, lr=lora.lr, seed=seed,
                                trainer=cosine_lora_training(lora, seed, run.max_steps))


def loss_table(losses: Mapping[str, Float[Tensor, " steps"]]) -> pd.DataFrame:
    """Long table of training loss curves (``mossa_states(...)["losses"]``): model, step (1-based), loss."""
    return pd.DataFrame([{"model": name, "step": i + 1, "loss": float(v)}
                         for name, curve in losses.items() for i, v in enumerate(curve.tolist())])


def lora_runs(states: Mapping[str, Mapping], lr: float, seed: int = 0) -> list[dict]:
    """The protocol runs of ``mossa_states(..., protocol=...)`` as ``protocol.run_arm``-style dicts
    (``protocol.curves_frame``, ``plots.loss_curves_figure``): arm ``"E:seen tasks"``,
    ``"control:<task>"`` (seed ``seed``), ``"ceiling:<task>"`` (seed + 1)."""
    if "curves" not in states:
        raise ValueError("these states have no dev curves: train with mossa_states(..., protocol=...)")
    runs = []
    for name, curve in states["curves"].items():
        kind, _, task = name.partition(":")
        runs.append({"arm": f"{kind}:{task or 'seen tasks'}", "arm_type": "lora", "lr": float(lr),
                     "seed": seed + 1 if kind == "ceiling" else seed,
                     "curve": {**curve, "train_loss": states["losses"][name].tolist()}})
    return runs


def convergence_table(states: Mapping[str, Mapping]) -> pd.DataFrame:
    """Per model of ``mossa_states(..., protocol=...)``: steps run and the cap, steps per epoch (between
    two dev evaluations), the best step and its epoch, the dev loss before training and at its best,
    and why it stopped (``"early"``: the dev loss did not improve for ``patience`` epochs; ``"max_steps"``:
    it reached the cap, so it may not have converged; ``"diverged"``)."""
    if "curves" not in states:
        raise ValueError("these states have no dev curves: train with mossa_states(..., protocol=...)")
    rows = []
    for name, c in states["curves"].items():
        per_epoch = c["dev_steps"][1] - c["dev_steps"][0] if len(c["dev_steps"]) > 1 else max(c["steps"], 1)
        rows.append({"model": name, "steps": c["steps"], "max_steps": c["max_steps"], "steps_per_epoch": per_epoch,
                     "best_step": c["best_step"], "best_epoch": c["best_step"] / per_epoch,
                     "dev_loss_untrained": c["dev_loss"][0], "dev_loss_best": min(c["dev_loss"]),
                     "stopped": c["stopped"]})
    return pd.DataFrame(rows)


STILL_FALLING_NATS = 0.1  # a fall over the last half of training larger than this, and significant, is not a plateau


def loss_summary(losses: Mapping[str, Float[Tensor, " steps"]]) -> pd.DataFrame:
    """Per model: steps; loss_first / loss_last, the mean loss over the first and the last fifth of the
    steps (at least one step each); fall = loss_first − loss_last; last_half_change, the least-squares
    slope of the loss over the last half of the steps times their number (how much the loss still
    moved at the end: near 0 once it has flattened; NaN with fewer than 4 steps), with its 95% CI
    (t on the slope's standard error); ``still_falling`` (the rule fixed before the runs): the change
    is below −``STILL_FALLING_NATS`` and its CI lies below 0."""
    from scipy import stats

    rows = []
    for name, curve in losses.items():
        y = np.asarray(curve.tolist(), dtype=float)
        if y.size == 0:
            raise ValueError(f"loss curve {name!r} is empty")
        k = max(1, y.size // 5)
        tail = y[y.size // 2:]
        change = low = high = float("nan")
        if y.size >= 4:
            fit = stats.linregress(np.arange(tail.size), tail)
            half = stats.t.ppf(0.975, tail.size - 2) * fit.stderr if tail.size > 2 else float("inf")
            change, low, high = (float(v * tail.size) for v in (fit.slope, fit.slope - half, fit.slope + half))
        rows.append({"model": name, "steps": int(y.size), "loss_first": float(y[:k].mean()),
                     "loss_last": float(y[-k:].mean()), "fall": float(y[:k].mean() - y[-k:].mean()),
                     "last_half_change": change, "change_ci_low": low, "change_ci_high": high,
                     "still_falling": bool(change < -STILL_FALLING_NATS and high < 0)})
    return pd.DataFrame(rows)
