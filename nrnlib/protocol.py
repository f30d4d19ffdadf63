"""One training protocol for every training notebook: a dev split, training to convergence on it,
the learning rate chosen per arm type on dev, loss curves as data, every arm cached and resumable.

- **Dev split** (``dev_split``): ``n_dev = min(dev_size, ⌊max_dev_fraction · |train|⌋)`` examples
  of each task's train split, chosen by a permutation seeded with the task's name
  (``tasks.splits.seeded_rng``), so the same task always gives the same dev examples; training
  uses the rest (the first ``n_train`` of it). Dev examples are never trained on.
- **Batches**: ``batch_size`` examples per step from a seeded permutation of all the tasks' training
  examples (``finetune.batch_stream``), or with ``task_batches`` and several tasks, each step from
  one task, the tasks in turn (``finetune.task_batch_stream``: the rows share their task's prompt
  prefix, which then runs once, and short tasks are not padded to a long task's length; 1.7-1.9x
  faster per step on notebook 04's joint runs, ``benchmarks/sweep_cost.py``).
- **Dev loss**: ``D = (1/|T|) Σ_tasks (1/n_dev) Σ_dev L_b``, the mean over tasks of the mean
  per-example answer loss ``L_b = −mean_t log p(y_bt | y_b<t, x_b)`` (``losses.per_example_loss``),
  without gradients, in eval mode (each batch's common prompt prefix run once: ``losses.final_hidden``).
- **Convergence** (``train_to_convergence``): ``D`` at step 0 and every ``eval_every`` steps (and at
  the last step); stop when the last ``patience`` evaluations did not improve on the best before
  them by more than ``min_delta`` (``should_stop``, a pure function), or at ``max_steps``, or when the
  loss turns non-finite ("diverged"). The weights of the lowest ``D`` (step 0 included) are kept and
  restored at the end.
- **Learning rate** (``select_lr``): per arm type ("neurons", "all", "lora"), each lr of the
  profile's grid trains every arm of that type on the first seed; the lr with the lowest mean best
  dev loss over those arms wins (``choose_lr``; the earliest grid value on ties). Those runs are
  cached, so the chosen lr's runs are the first seed's final runs.
- **Arms** (``run_arm``, ``run_protocol``): each (arm, lr, seed) trains from the model's current
  weights inside ``model_state.restored_after``, then ``measure(model)`` scores the best weights;
  the result (curves + measurement) is one ``store.cached`` entry keyed by the model fingerprint,
  the digests of the exact train and dev examples, the neuron set's digest, the protocol settings,
  the measurement's settings and the code digest of the modules involved. An interrupted run
  resumes at the next arm.

Training itself is ``finetune.training`` / ``Trainer`` (full, masked or neuron-sparse), the same
step as ``finetune``; other arm types (LoRA) pass a ``trainer`` factory with the same interface.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, runtime_checkable
from typing import Protocol as TypingProtocol

import torch
from tqdm.auto import tqdm

from nrnlib import encoding, losses, store
from nrnlib.checks import check_float, check_int
from nrnlib.finetune import (
    NonFiniteLossError,
    _as_tasks,
    _check_mode,
    _encode_items,
    batch_stream,
    task_batch_stream,
    training,
)
from nrnlib.model_state import eval_mode, model_fingerprint, restored_after
from nrnlib.neurons import NeuronSet
from nrnlib.tasks.splits import seeded_rng

ARM_TYPES = ("neurons", "all", "lora")
DEFAULT_LR_GRIDS = {"neurons": (3e-4, 1e-3, 3e-3), "all": (1e-5, 3e-5, 1e-4), "lora": (1e-4, 3e-4, 1e-3)}
PROTOCOL_CODE = ("finetune", "sparse", "protocol", "losses", "encoding")  # code behind every arm (code digest)


# --------------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """The protocol's settings (``Protocol.from_profile(profile)`` takes them from a profile)."""

    dev_size: int = 32  # dev examples per task (at most max_dev_fraction of its train split)
    eval_every: int = 10  # training steps between dev-loss evaluations
    patience: int = 3  # evaluations without improvement before stopping
    max_steps: int = 300  # step cap per run
    batch_size: int = 4  # training examples per step
    n_train: int | None = None  # training examples per task after the dev split (None: all the rest)
    lr_grids: Mapping[str, tuple[float, ...]] = field(default_factory=lambda: dict(DEFAULT_LR_GRIDS))
    weight_decay: float = 0.0
    min_delta: float = 0.0  # an improvement must lower the best dev loss by more than this
    max_dev_fraction: float = 0.25
    dev_batch_size: int = 16
    task_batches: bool = False  # several tasks: each step's batch from one task, the tasks in turn

    def __post_init__(self) -> None:
        where = "Protocol"
        for name in ("dev_size", "eval_every", "patience", "max_steps", "batch_size", "dev_batch_size"):
            check_int(getattr(self, name), name, minimum=1, where=where)
        check_int(self.n_train, "n_train", minimum=1, where=where, none_ok=True)
        check_float(self.weight_decay, "weight_decay", minimum=0.0, where=where)
        check_float(self.min_delta, "min_delta", minimum=0.0, where=where)
        if not 0 < check_float(self.max_dev_fraction, "max_dev_fraction", where=where) < 1:
            raise ValueError(f"Protocol: max_dev_fraction must be in (0, 1), got {self.max_dev_fraction}")
        grids = {str(k): tuple(check_float(v, f"lr_grids[{k!r}]", positive=True, where=where) for v in vals)
                 for k, vals in dict(self.lr_grids).items()}
        if not grids or not all(grids.values()):
            raise ValueError(f"Protocol: every lr grid needs at least one value, got {dict(self.lr_grids)}")
        object.__setattr__(self, "lr_grids", grids)

    @classmethod
    def from_profile(cls, profile, **overrides: Any) -> Protocol:
        """The protocol of a ``profiles.Profile`` (its dev_size, eval_every, patience, max_steps,
        lr_grids, finetune_batch_size and n_train); ``overrides`` replace single settings."""
        values = {"dev_size": profile.dev_size, "eval_every": profile.eval_every, "patience": profile.patience,
                  "max_steps": profile.max_steps, "lr_grids": dict(profile.lr_grids),
                  "batch_size": profile.finetune_batch_size, "n_train": profile.n_train}
        return cls(**{**values, **overrides})

    def grid(self, arm_type: str) -> tuple[float, ...]:
        """The learning rates tried for ``arm_type``."""
        if arm_type not in self.lr_grids:
            raise ValueError(f"no lr grid for arm type {arm_type!r}; the protocol has {sorted(self.lr_grids)}")
        return self.lr_grids[arm_type]

    def run_settings(self) -> dict[str, Any]:
        """What one training run depends on (the cache key's protocol part; the grids are not: a
        run's key holds the lr it used)."""
        out = asdict(self)
        out.pop("lr_grids")
        return out


# --------------------------------------------------------------------------------------------------
# dev split and dev loss
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DevSplit:
    """A task's train split cut in two: ``train`` (trained on) and ``dev`` (never trained on)."""

    task: Any  # nrnlib.tasks.Task
    train: tuple[dict, ...]
    dev: tuple[dict, ...]

    def digests(self) -> dict[str, str]:
        """Task digests of the exact examples: ``{"name:train": ..., "name:dev": ...}``."""
        return {f"{self.task.name}:train": self.task.digest(self.train),
                f"{self.task.name}:dev": self.task.digest(self.dev)}


def dev_split(task, dev_size: int, n_train: int | None = None, max_dev_fraction: float = 0.25) -> DevSplit:
    """``n_dev = min(dev_size, ⌊max_dev_fraction · |train|⌋)`` (at least 1) dev examples drawn by a
    permutation seeded with the task's name; train = the other examples in their order, the first
    ``n_train`` of them. Deterministic, and nested: a smaller ``dev_size`` takes a prefix of the
    same permutation."""
    train = list(task.train)
    n_dev = max(1, min(int(dev_size), int(max_dev_fraction * len(train))))
    if len(train) < n_dev + 1:
        raise ValueError(f"task {task.name!r} has {len(train)} train examples: too few for a dev split")
    order = list(range(len(train)))
    seeded_rng("dev-split", task.name).shuffle(order)
    dev_index = set(order[:n_dev])
    rest = [ex for i, ex in enumerate(train) if i not in dev_index]
    return DevSplit(task=task, train=tuple(rest[:n_train] if n_train is not None else rest),
                    dev=tuple(train[i] for i in sorted(dev_index)))


@torch.no_grad()
def dev_loss(model, dev_batches: Sequence[Sequence[encoding.EncodedBatch]]) -> float:
    """``D = mean_tasks mean_examples L_b`` over pre-encoded dev batches (one list per task)."""
    with eval_mode(model):
        per_task = []
        for batches in dev_batches:
            values = torch.cat([losses.per_example_loss(model, b, share_prefix=True).double().cpu() for b in batches])
            per_task.append(float(values.mean()))
    return sum(per_task) / len(per_task)


def _dev_batches(model, split: DevSplit, batch_size: int) -> list[encoding.EncodedBatch]:
    device = next(iter(model.parameters())).device
    return [b.to(device) for b in encoding.batches(model, split.task, list(split.dev), batch_size)]


# --------------------------------------------------------------------------------------------------
# stopping rule
# --------------------------------------------------------------------------------------------------


def _finite(values: Sequence[float]) -> list[float]:
    return [v if math.isfinite(v) else math.inf for v in values]


def best_evaluation(dev_losses: Sequence[float]) -> int:
    """Index of the lowest dev loss (the first on ties; NaN counts as +inf)."""
    values = _finite(dev_losses)
    return min(range(len(values)), key=values.__getitem__)


def should_stop(dev_losses: Sequence[float], patience: int, min_delta: float = 0.0) -> bool:
    """True when none of the last ``patience`` evaluations is below ``min(earlier) − min_delta``:
    ``stop ⇔ n > patience and min(D[n−p:]) ≥ min(D[:n−p]) − min_delta``. NaN counts as +inf."""
    values = _finite(dev_losses)
    if len(values) <= patience:
        return False
    return min(values[-patience:]) >= min(values[:-patience]) - min_delta


# --------------------------------------------------------------------------------------------------
# training to convergence
# --------------------------------------------------------------------------------------------------


@runtime_checkable
class TrainerLike(TypingProtocol):
    """What ``train_to_convergence`` drives (``finetune.Trainer``; a LoRA trainer provides the same)."""

    n_trainable_entries: int

    def step(self, batch: encoding.EncodedBatch, total: int | None = None) -> float: ...

    def state(self) -> Any: ...

    def load_state(self, state: Any) -> None: ...


# ``trainer(model, lr=..., weight_decay=...)`` -> a context manager yielding a TrainerLike
TrainerFactory = Callable[..., contextlib.AbstractContextManager]


@dataclass
class Curve:
    """One run: the train loss of every step, the dev loss of every evaluation, where it was best."""

    lr: float
    train_loss: list[float] = field(default_factory=list)
    dev_steps: list[int] = field(default_factory=list)
    dev_loss: list[float] = field(default_factory=list)
    best_step: int = 0
    best_dev_loss: float = math.inf
    steps: int = 0
    stopped: str = "max_steps"  # "early", "max_steps" or "diverged"
    n_trainable_entries: int = 0
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_to_convergence(
    model, tasks, protocol: Protocol, *, lr: float, neurons: NeuronSet | None = None, mode: str | None = None,
    seed: int = 0, trainer: TrainerFactory | None = None, allow_other_model: bool = False, progress: bool = False,
) -> Curve:
    """Train ``model`` in place under ``protocol`` at ``lr``; on return it holds the weights of the
    lowest dev loss. ``neurons``/``mode`` as in ``finetune`` (None: all parameters; a NeuronSet:
    neuron-sparse); ``trainer`` replaces both with another arm type's factory (e.g. LoRA). The
    batches are those of ``finetune`` with the same seed over the dev-split train examples; the torch
    RNG is seeded with ``seed`` (dropout) and restored afterwards."""
    tasks = _as_tasks(tasks, "train_to_convergence")
    lr = check_float(lr, "lr", positive=True, where="train_to_convergence")
    seed = check_int(seed, "seed", where="train_to_convergence")
    splits = [dev_split(t, protocol.dev_size, protocol.n_train, protocol.max_dev_fraction) for t in tasks]
    encoded = [_encode_items(model, [(s.task, ex) for ex in s.train]) for s in splits]
    dev = [_dev_batches(model, s, protocol.dev_batch_size) for s in splits]
    if trainer is None:
        def trainer(model, lr, weight_decay):  # noqa: ANN001, ANN202 - the default factory
            return training(model, neurons, lr=lr, weight_decay=weight_decay, mode=mode,
                            allow_other_model=allow_other_model, where="train_to_convergence")
    curve = Curve(lr=lr)
    start = time.perf_counter()
    device = next(iter(model.parameters())).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with trainer(model, lr=lr, weight_decay=protocol.weight_decay) as t:
            curve.n_trainable_entries = int(t.n_trainable_entries)
            best_state = _evaluate(model, t, dev, curve, step=0, best_state=None)
            if protocol.task_batches and len(encoded) > 1:
                batches = task_batch_stream(model, encoded, protocol.batch_size, seed)
            else:
                batches = batch_stream(model, [e for per in encoded for e in per], protocol.batch_size, seed)
            bar = tqdm(range(1, protocol.max_steps + 1), desc="train", disable=not progress, leave=False)
            for step in bar:
                try:
                    curve.train_loss.append(t.step(next(batches), total=protocol.max_steps))
                except NonFiniteLossError:
                    curve.stopped = "diverged"
                    break
                curve.steps = step
                if step % protocol.eval_every == 0 or step == protocol.max_steps:
                    best_state = _evaluate(model, t, dev, curve, step, best_state)
                    bar.set_postfix(dev=f"{curve.dev_loss[-1]:.4f}",
                                    best=f"{curve.best_dev_loss:.4f}@{curve.best_step}")
                    if should_stop(curve.dev_loss, protocol.patience, protocol.min_delta):
                        curve.stopped = "early"
                        break
            t.load_state(best_state)
    curve.wall_s = time.perf_counter() - start
    return curve


def _evaluate(model, t: TrainerLike, dev, curve: Curve, step: int, best_state: Any) -> Any:
    """Append the dev loss at ``step``; return the trainer state of the best evaluation so far."""
    value = dev_loss(model, dev)
    curve.dev_steps.append(step)
    curve.dev_loss.append(value)
    if best_state is None or (math.isfinite(value) and value < curve.best_dev_loss):
        curve.best_step, curve.best_dev_loss = step, value
        return t.state()
    return best_state


# --------------------------------------------------------------------------------------------------
# arms, lr selection, the whole protocol
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arm:
    """One way of training: ``arm_type`` picks the lr grid ("neurons" needs ``neurons``; "all" trains
    every parameter; other types, e.g. "lora", need a ``trainer`` factory, its JSON ``settings`` and
    the nrnlib modules of its ``code``, which enter the cache key)."""

    name: str
    arm_type: str
    neurons: NeuronSet | None = None
    mode: str | None = None
    trainer: TrainerFactory | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    code: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.arm_type == "neurons" and not isinstance(self.neurons, NeuronSet):
            raise ValueError(f"arm {self.name!r}: arm type 'neurons' needs a NeuronSet")
        if self.arm_type == "all" and (self.neurons is not None or self.trainer is not None):
            raise ValueError(f"arm {self.name!r}: arm type 'all' trains every parameter (no neurons, no trainer)")
        if self.arm_type not in ("neurons", "all") and self.trainer is None:
            raise ValueError(f"arm {self.name!r}: arm type {self.arm_type!r} needs a trainer factory")
        if self.trainer is None:
            _check_mode(self.mode, self.neurons, f"arm {self.name!r}")

    def key(self) -> dict[str, Any]:
        mode = None if self.trainer is not None else _check_mode(self.mode, self.neurons, self.name)
        return {"arm": self.name, "arm_type": self.arm_type, "mode": mode,
                "neurons": self.neurons.digest() if self.neurons is not None else None, "trainer": dict(self.settings)}


Measure = Callable[[Any], dict]


def run_arm(
    model, tasks, arm: Arm, protocol: Protocol, *, lr: float, seed: int = 0, measure: Measure | None = None,
    measure_settings: Mapping[str, Any] | None = None, measure_code: Sequence[str] = (),
    fingerprint: str | None = None, allow_other_model: bool = False, cache: bool = True,
) -> dict[str, Any]:
    """Train ``arm`` to convergence from the model's current weights, ``measure(model)`` the best
    weights (a JSON dict, e.g. test metrics), put the model back. Returns ``{"arm", "arm_type",
    "lr", "seed", "curve": Curve.as_dict(), "measure"}``, cached (``store.cached``, kind
    "protocol_arm"); ``measure_settings`` (JSON) and ``measure_code`` (nrnlib modules) describe the
    measurement in the key and are required with a ``measure``."""
    tasks = _as_tasks(tasks, "run_arm")
    if measure is not None and measure_settings is None:
        raise ValueError("run_arm: a measure needs measure_settings (what it computes, for the cache key)")
    splits = [dev_split(t, protocol.dev_size, protocol.n_train, protocol.max_dev_fraction) for t in tasks]
    digests = {k: v for s in splits for k, v in s.digests().items()}

    def compute() -> dict[str, Any]:
        with restored_after(model):
            curve = train_to_convergence(model, tasks, protocol, lr=lr, neurons=arm.neurons, mode=arm.mode, seed=seed,
                                         trainer=arm.trainer, allow_other_model=allow_other_model)
            measured = measure(model) if measure is not None else None
        return {"arm": arm.name, "arm_type": arm.arm_type, "lr": lr, "seed": seed, "curve": curve.as_dict(),
                "measure": measured}

    settings = {"arm": arm.key(), "lr": float(lr), "seed": int(seed), "protocol": protocol.run_settings(),
                "measure": dict(measure_settings) if measure_settings is not None else None}
    return store.cached("protocol_arm", compute, settings=settings,
                        code=tuple(PROTOCOL_CODE) + tuple(arm.code) + tuple(measure_code),
                        model=model, fingerprint=fingerprint, tasks=digests, cache=cache)


def choose_lr(scores: Mapping[float, float]) -> float:
    """The lr with the lowest score (mean best dev loss); the first in order on ties; NaN = +inf."""
    lrs = list(scores)
    values = _finite([scores[lr] for lr in lrs])
    return lrs[min(range(len(lrs)), key=values.__getitem__)]


def select_lr(model, tasks, arms: Sequence[Arm], protocol: Protocol, *, seed: int = 0, **run_kw: Any) -> dict:
    """For arms of one type: every lr of its grid trains every arm (``run_arm``, cached) at ``seed``;
    ``score(lr) = mean_arms best_dev_loss``; returns ``{"arm_type", "lr": choose_lr(score),
    "scores": {lr: score}, "runs": [run_arm results]}``."""
    types = {a.arm_type for a in arms}
    if len(types) != 1:
        raise ValueError(f"select_lr: the arms must share one arm type, got {sorted(types)}")
    arm_type = types.pop()
    scores, runs = {}, []
    for lr in protocol.grid(arm_type):
        results = [run_arm(model, tasks, arm, protocol, lr=lr, seed=seed, **run_kw) for arm in arms]
        runs.extend(results)
        scores[lr] = sum(r["curve"]["best_dev_loss"] for r in results) / len(results)
    return {"arm_type": arm_type, "lr": choose_lr(scores), "scores": scores, "runs": runs}


def run_protocol(model, tasks, arms: Sequence[Arm], protocol: Protocol, seeds: Sequence[int] = (0,),
                 **run_kw: Any) -> dict[str, Any]:
    """The whole protocol: the lr of each arm type chosen on ``seeds[0]`` (``select_lr`` over the
    arms of that type), then every arm at its type's lr for every seed (the first seed's runs are
    the selection's, served from the cache). Returns ``{"lr": {arm_type: selection without runs},
    "runs": [run_arm results in (seed, arm) order]}``."""
    if not arms or not seeds:
        raise ValueError("run_protocol needs at least one arm and one seed")
    if run_kw.get("fingerprint") is None:  # every arm starts from (and restores) the same weights: read them once
        run_kw["fingerprint"] = model_fingerprint(model)
    chosen = {}
    for arm_type in dict.fromkeys(a.arm_type for a in arms):
        selection = select_lr(model, tasks, [a for a in arms if a.arm_type == arm_type], protocol, seed=seeds[0],
                              **run_kw)
        chosen[arm_type] = {k: v for k, v in selection.items() if k != "runs"}
    runs = [run_arm(model, tasks, arm, protocol, lr=chosen[arm.arm_type]["lr"], seed=seed, **run_kw)
            for seed in seeds for arm in arms]
    return {"lr": chosen, "runs": runs}


# --------------------------------------------------------------------------------------------------
# curves as data (the figure: plots.loss_curves_figure)
# --------------------------------------------------------------------------------------------------


def curves_frame(runs: Sequence[Mapping[str, Any]]):
    """Tidy loss curves of ``run_arm`` results: one row per (arm, lr, seed, split, step, loss), with
    split "train" (every step) or "dev" (every evaluation) and ``best`` marking the best evaluation."""
    import pandas as pd

    rows = []
    for r in runs:
        c, base = r["curve"], {"arm": r["arm"], "arm_type": r["arm_type"], "lr": r["lr"], "seed": r["seed"]}
        rows += [{**base, "split": "train", "step": i + 1, "loss": v, "best": False}
                 for i, v in enumerate(c["train_loss"])]
        rows += [{**base, "split": "dev", "step": s, "loss": v, "best": s == c["best_step"]}
                 for s, v in zip(c["dev_steps"], c["dev_loss"], strict=True)]
    return pd.DataFrame(rows, columns=["arm", "arm_type", "lr", "seed", "split", "step", "loss", "best"])
