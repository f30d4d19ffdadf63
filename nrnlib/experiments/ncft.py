"""Notebook 06 (Paper A Table 3): neuron-level continual fine-tuning (NCFT) against catastrophic
forgetting, on the training protocol, with the baselines that share its data, order and budget.

A sequence trains tasks ``D_0 … D_{T−1}`` one after another; stage n trains ``D_n`` to convergence on
its dev split (``protocol.train_to_convergence``, a fresh optimizer per stage: no state carries over)
and then scores every task of the sequence, giving row ``n + 1`` of the performance matrix ``R``
(``nrnlib.continual``); row 0 is the model before any training. Methods (``METHODS``):

- ``seqft``: every parameter (sequential full fine-tuning, the baseline);
- ``ncft``: only ``N_n``, ``D_n``'s top-k neurons detected on the model *as it stands before stage n*
  (the paper's reading: "while training on D_n, update only D_n's task-specific neurons");
- ``ncft_original``: only ``D_n``'s neurons detected once on the original model;
- ``random``: as many neurons as ``D_n``'s set, drawn uniformly over all layers (a new draw per stage);
- ``w_ncft``: W-NCFT with 0/1 weights: ``N_n`` minus every neuron trained at an earlier stage, so
  updates for the current task never touch what earlier tasks were trained into. A neuron's weight
  is 1 if it is in ``N_n`` and in no earlier stage's trained set, else 0 — the simplest weighting
  that protects earlier tasks' neurons, and one whose trained entries can be tested bit-exactly;
- ``w_ncft_graded``: W-NCFT with graded weights (``nrnlib.weighted_update``): every neuron of
  ``N_n`` trains at ``w_j · lr``, ``w_j = clip(r_j / max r, 0, 1) · 0.5^{c_j}`` (relevance for
  ``D_n``, halved per earlier stage that trained ``j``);
- ``replay``: sequential full fine-tuning with experience replay (``nrnlib.replay``): each step adds
  ``memory_batch`` examples from a memory of ``replay_per_task`` training examples per earlier task;
- ``lora``: sequential LoRA (``nrnlib.lora.lora_training``, q and v, rank 8): a fresh adapter per
  stage, merged into the weights when the stage ends.

Beside the sequences, ``joint_reference`` trains every task of the sequence at once (all
parameters, the protocol's dev loss over all tasks): the multi-task upper reference for AP.

**Resuming.** Each stage's record (its trained set, loss curve and the scores of every task) is a
cache entry; after every stage but the last the parameters that differ from the sequence's start are
written as a checkpoint (the previous one is deleted; all are deleted when the sequence ends). An
interrupted sequence reloads the last checkpoint whose stage records are all cached and continues
at the next stage; a finished one is read from the cache.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from nrnlib import store
from nrnlib.experiments.measures import MEASURE_CODE, TestMeasure, measure_untrained
from nrnlib.lora import LoraSettings, lora_training
from nrnlib.model_state import model_fingerprint, restored_after
from nrnlib.neurons import NeuronSet
from nrnlib.protocol import PROTOCOL_CODE, Arm, Protocol, dev_split, run_arm, select_lr, train_to_convergence
from nrnlib.replay import memory_items, replay_training
from nrnlib.tasks import get_task
from nrnlib.weighted_update import neuron_weights, weighted_factory
from nrnlib.workers import run_jobs

METHODS = ("seqft", "ncft", "ncft_original", "random", "w_ncft", "w_ncft_graded", "replay", "lora")
LR_TYPE = {"seqft": "all", "replay": "all", "lora": "lora"}  # the lr grid of each method; the rest: "neurons"
SEQUENCE_CODE = (*PROTOCOL_CODE, *MEASURE_CODE, "experiments.ncft", "replay", "weighted_update", "lora")
Selector = Callable[[Any, Any], NeuronSet]  # (model as it stands, task) -> the task's neuron set
Relevance = Callable[[Any, Any], torch.Tensor]  # (model as it stands, task) -> relevance [n_layers, d_mlp]
DEFAULT_SETTINGS = {"replay_per_task": 16, "memory_batch": 2,
                    "lora": {"r": 8, "alpha": 16.0, "targets": ["q_proj", "v_proj"]}}


def _indices(neurons: NeuronSet | None) -> dict[str, list[int]] | None:
    return None if neurons is None else {str(lay): neurons.indices(lay).tolist() for lay in neurons.layers()}


def _from_indices(indices: Mapping[str, list[int]], like: NeuronSet) -> NeuronSet:
    return NeuronSet.from_indices(like.n_layers, like.d_mlp, {int(k): v for k, v in indices.items()})


def stage_neurons(method: str, model, task, stage: int, seed: int, selector: Selector, original: NeuronSet,
                  earlier: Sequence[NeuronSet]) -> NeuronSet | None:
    """The set stage ``stage`` trains under ``method`` (None: every parameter); ``original`` is the
    task's set on the original model, ``earlier`` the sets trained at earlier stages."""
    if method == "seqft":
        return None
    if method == "ncft_original":
        return original
    if method == "random":
        return original.random_like(1000 * seed + stage, match="total")
    current = selector(model, task)
    if method == "ncft":
        return current
    if method == "w_ncft":
        kept = current.mask.clone()
        for s in earlier:
            kept &= ~s.mask
        return NeuronSet(kept, name=f"{current.name} minus earlier").for_model(model)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _lora_settings(settings: Mapping[str, Any]) -> LoraSettings:
    return LoraSettings(**{**settings["lora"], "targets": tuple(settings["lora"]["targets"])})


def stage_plan(method: str, model, tasks: Sequence, stage: int, seed: int, selector: Selector, original: NeuronSet,
               earlier: Sequence[NeuronSet], *, relevance: Relevance | None, train_of: Callable,
               settings: Mapping[str, Any]) -> tuple[NeuronSet | None, Any, dict]:
    """What stage ``stage`` trains under ``method``: ``(neurons, trainer factory or None, extra record
    fields)``; ``tasks`` is the whole order, ``train_of(task)`` its training examples after the dev
    split, ``settings`` the replay and LoRA settings (``DEFAULT_SETTINGS``)."""
    task = tasks[stage]
    if method == "replay":
        if stage == 0:
            return None, None, {"memory": 0}
        memory = memory_items(model, tasks[:stage], settings["replay_per_task"], train_of)
        factory = replay_training(memory, settings["memory_batch"], seed=1000 * seed + stage)
        return None, factory, {"memory": len(memory)}
    if method == "lora":
        return None, lora_training(_lora_settings(settings), seed=1000 * seed + stage), {}
    if method == "w_ncft_graded":
        if relevance is None:
            raise ValueError("method 'w_ncft_graded' needs relevance=(model, task) -> scores [n_layers, d_mlp]")
        current = selector(model, task)
        weights = neuron_weights(relevance(model, task), current, earlier)
        return current, weighted_factory(current, weights), {"mean_weight": float(weights[current.mask].mean())}
    return stage_neurons(method, model, task, stage, seed, selector, original, earlier), None, {}


def _changed(model, start: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if not torch.equal(p.detach().cpu(),
                                                                                                start[n])}


def run_sequence(
    model, order: Sequence[str], method: str, protocol: Protocol, *, lr: float, seed: int, selector: Selector,
    select_settings: Mapping[str, Any], n_test: int, batch_size: int = 16, relevance: Relevance | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One sequence (module docstring); the model is restored afterwards. Returns ``{"method",
    "order", "seed", "lr", "untrained": {task: scores}, "stages": [stage records]}``; a record holds
    ``stage``, ``task``, ``neurons`` (per-layer indices or None), ``curve`` and ``scores``.
    ``relevance`` is needed by ``w_ncft_graded``; ``settings`` (replay, LoRA) default to
    ``DEFAULT_SETTINGS`` and enter the cache key of the methods that use them."""
    settings = {**DEFAULT_SETTINGS, **(settings or {})}
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if len(order) < 2 or len(set(order)) != len(order):
        raise ValueError(f"a sequence needs at least two distinct tasks, got {list(order)}")
    tasks = [get_task(t) for t in order]
    fp = model_fingerprint(model)
    measures = {t.name: TestMeasure(t, n_test, batch_size) for t in tasks}
    untrained = {name: measure_untrained(model, m, fp) for name, m in measures.items()}
    digests = {k: v for t in tasks for k, v in dev_split(t, protocol.dev_size, protocol.n_train,
                                                         protocol.max_dev_fraction).digests().items()}
    common = {"method": method, "order": list(order), "seed": int(seed), "lr": float(lr),
              "protocol": protocol.run_settings(), "select": dict(select_settings),
              "measure": {n: m.settings() for n, m in measures.items()}}
    if method in ("replay", "lora"):
        common[method] = settings["lora"] if method == "lora" else {k: settings[k] for k in ("replay_per_task",
                                                                                          "memory_batch")}

    def where(stage: int, kind: str) -> dict[str, Any]:
        return dict(settings={**common, "stage": stage}, code=SEQUENCE_CODE, fingerprint=fp, tasks=digests,
                    fmt="json" if kind == "ncft_stage" else "tensors")

    records = [store.lookup("ncft_stage", **where(n, "ncft_stage")) for n in range(len(order))]
    done = 0
    while done < len(records) and records[done] is not None:
        done += 1
    resume = None
    while done and done < len(order):  # the last cached stage must have its checkpoint to continue from it
        resume = store.lookup("ncft_checkpoint", **where(done - 1, "ncft_checkpoint"))
        if resume is not None:
            break
        done -= 1
    if done < len(order):
        with restored_after(model):
            plan = functools.partial(stage_plan, relevance=relevance, settings=settings,
                                     train_of=lambda t: dev_split(t, protocol.dev_size, protocol.n_train,
                                                                  protocol.max_dev_fraction).train)
            _train_stages(model, tasks, method, protocol, lr, seed, selector, plan, measures, records, done, resume,
                          where)
    return {"method": method, "order": list(order), "seed": seed, "lr": lr, "untrained": untrained,
            "stages": records}


def run_sequences(model, jobs: Sequence[Mapping[str, Any]], *, workers: int | None = None, progress: bool = True,
                  **common: Any) -> list[dict[str, Any]]:
    """``[run_sequence(model, **common, **job) for job in jobs]`` (each job names its ``order``,
    ``method``, ``lr`` and ``seed``), the sequences shared out over ``workers`` processes
    (``workers.run_jobs``; default ``$NRN_WORKERS``): every stage is cached, so this process reads back
    the sequences a helper trained."""
    return run_jobs([functools.partial(run_sequence, model, **common, **job) for job in jobs], workers=workers,
                    desc="sequences", progress=progress, device=model.cfg.device)


def _train_stages(model, tasks, method, protocol, lr, seed, selector, plan, measures, records, done, resume,
                  where) -> None:
    """Train stages ``done …`` (after loading ``resume``), writing each record and checkpoint."""
    start = {n: p.detach().cpu().clone() for n, p in model.named_parameters()}
    original = {t.name: selector(model, t) for t in tasks} if method in ("ncft_original", "random") else {}
    like = NeuronSet.empty(int(model.cfg.n_layers), int(model.cfg.d_mlp))
    if resume is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in resume.items():
                params[name].copy_(value.to(params[name].device))
    earlier = [_from_indices(r["neurons"], like) for r in records[:done] if r["neurons"] is not None]
    for n in range(done, len(tasks)):
        trained: dict[str, Any] = {}

        def train_stage(n: int = n, trained: dict[str, Any] = trained) -> dict[str, Any]:
            # inside the store's call, so the entry's compute_s is the stage's selection, training and scoring
            neurons, trainer, extra = plan(method, model, tasks, n, seed, selector,
                                           original.get(tasks[n].name, like), earlier)
            curve = train_to_convergence(model, [tasks[n]], protocol, lr=lr, neurons=None if trainer else neurons,
                                         seed=seed, trainer=trainer)
            trained["neurons"] = neurons
            return {"stage": n, "task": tasks[n].name, "neurons": _indices(neurons),
                    "n_neurons": None if neurons is None else neurons.count, "curve": curve.as_dict(),
                    "scores": {name: m(model) for name, m in measures.items()}, **extra}

        records[n] = store.cached("ncft_stage", train_stage, **where(n, "ncft_stage"))
        if "neurons" not in trained:  # the model must hold the stage whose record is kept
            raise RuntimeError(f"{method} stage {n} ({tasks[n].name}) was stored by another process while this one "
                               "was to train it; run each sequence in one process (run_sequences does)")
        neurons = trained["neurons"]
        if neurons is not None:
            earlier.append(neurons)
        if n < len(tasks) - 1:
            store.cached("ncft_checkpoint", lambda: _changed(model, start), **where(n, "ncft_checkpoint"))
        if n > done or resume is not None:
            store.entry_path("ncft_checkpoint", **where(n - 1, "ncft_checkpoint")).unlink(missing_ok=True)


def joint_reference(model, order: Sequence[str], protocol: Protocol, *, lr: float, seed: int, n_test: int,
                    batch_size: int = 16) -> dict[str, Any]:
    """Multi-task joint training on every task of ``order`` at once (all parameters; the dev loss is
    the mean over the tasks; ``protocol.run_arm``, cached), scored on each task's test examples: the
    upper reference for AP. Returns ``{"method": "joint", "tasks", "seed", "lr", "curve", "scores"}``."""
    tasks = [get_task(t) for t in sorted(order)]
    measures = {t.name: TestMeasure(t, n_test, batch_size) for t in tasks}
    arm = run_arm(model, tasks, Arm("joint", "all"), protocol, lr=lr, seed=seed,
                  measure=lambda m: {name: measure(m) for name, measure in measures.items()},
                  measure_settings={n: m.settings() for n, m in measures.items()}, measure_code=MEASURE_CODE)
    return {"method": "joint", "tasks": [t.name for t in tasks], "seed": seed, "lr": lr, "curve": arm["curve"],
            "scores": arm["measure"]}


def select_learning_rates(model, task: str, protocol: Protocol, arm_types: Sequence[str], *, selector: Selector,
                          settings: Mapping[str, Any] | None = None) -> dict[str, dict]:
    """The protocol's lr per arm type ("all", "neurons", "lora"), chosen on ``task`` (the first of the
    sequence) from the model as it is, i.e. in stage 0's situation: ``protocol.select_lr`` over one arm
    of each type (every parameter; the task's neurons from ``selector``; a LoRA adapter), seed 0.
    Returns ``{arm_type: {"lr", "scores"}}``."""
    settings = {**DEFAULT_SETTINGS, **(settings or {})}
    t = get_task(task)
    arms = {"all": lambda: Arm("seqft", "all"),
            "neurons": lambda: Arm("ncft", "neurons", neurons=selector(model, t)),
            "lora": lambda: Arm("lora", "lora", trainer=lora_training(_lora_settings(settings), seed=0),
                                settings=dict(settings["lora"]), code=("lora",))}
    out = {}
    for arm_type in dict.fromkeys(arm_types):
        selection = select_lr(model, [t], [arms[arm_type]()], protocol, seed=0)
        out[arm_type] = {"lr": selection["lr"], "scores": selection["scores"]}
    return out
