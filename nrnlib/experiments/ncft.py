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
  that protects earlier tasks' neurons, and one whose trained entries can be tested bit-exactly.

**Resuming.** Each stage's record (its trained set, loss curve and the scores of every task) is a
cache entry; after every stage but the last the parameters that differ from the sequence's start are
written as a checkpoint (the previous one is deleted; all are deleted when the sequence ends). An
interrupted sequence reloads the last checkpoint whose stage records are all cached and continues
at the next stage; a finished one is read from the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from nrnlib import store
from nrnlib.continual import continual_metrics
from nrnlib.experiments.neuron_finetuning import MEASURE_CODE, TestMeasure, measure_untrained
from nrnlib.model_state import model_fingerprint, restored_after
from nrnlib.neurons import NeuronSet
from nrnlib.protocol import PROTOCOL_CODE, Protocol, dev_split, train_to_convergence
from nrnlib.tasks import get_task

METHODS = ("seqft", "ncft", "ncft_original", "random", "w_ncft")
SEQUENCE_CODE = (*PROTOCOL_CODE, *MEASURE_CODE, "experiments.ncft")
Selector = Callable[[Any, Any], NeuronSet]  # (model as it stands, task) -> the task's neuron set


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


def _changed(model, start: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if not torch.equal(p.detach().cpu(),
                                                                                                start[n])}


def run_sequence(
    model, order: Sequence[str], method: str, protocol: Protocol, *, lr: float, seed: int, selector: Selector,
    select_settings: Mapping[str, Any], n_test: int, batch_size: int = 16,
) -> dict[str, Any]:
    """One sequence (module docstring); the model is restored afterwards. Returns ``{"method",
    "order", "seed", "lr", "untrained": {task: scores}, "stages": [stage records]}``; a record holds
    ``stage``, ``task``, ``neurons`` (per-layer indices or None), ``curve`` and ``scores``."""
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
            _train_stages(model, tasks, method, protocol, lr, seed, selector, measures, records, done, resume, where)
    return {"method": method, "order": list(order), "seed": seed, "lr": lr, "untrained": untrained,
            "stages": records}


def _train_stages(model, tasks, method, protocol, lr, seed, selector, measures, records, done, resume, where) -> None:
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
        neurons = stage_neurons(method, model, tasks[n], n, seed, selector, original.get(tasks[n].name, like),
                                earlier)
        curve = train_to_convergence(model, [tasks[n]], protocol, lr=lr, neurons=neurons, seed=seed)
        record = {"stage": n, "task": tasks[n].name, "neurons": _indices(neurons),
                  "n_neurons": None if neurons is None else neurons.count, "curve": curve.as_dict(),
                  "scores": {name: m(model) for name, m in measures.items()}}
        records[n] = store.cached("ncft_stage", lambda r=record: r, **where(n, "ncft_stage"))
        if neurons is not None:
            earlier.append(neurons)
        if n < len(tasks) - 1:
            store.cached("ncft_checkpoint", lambda: _changed(model, start), **where(n, "ncft_checkpoint"))
        if n > done or resume is not None:
            store.entry_path("ncft_checkpoint", **where(n - 1, "ncft_checkpoint")).unlink(missing_ok=True)


def performance_matrix(sequence: Mapping[str, Any], metric: str = "logprob") -> np.ndarray:
    """``R`` ([T + 1, T]): row 0 the untrained model's mean ``metric`` per task of the order, row n + 1
    after stage n."""
    order = sequence["order"]

    def mean(scores: Mapping[str, Any], task: str) -> float:
        values = scores[task]["per_example"][metric]
        return float(np.mean(values))

    rows = [[mean(sequence["untrained"], t) for t in order]]
    rows += [[mean(record["scores"], t) for t in order] for record in sequence["stages"]]
    return np.asarray(rows)


def sequence_metrics(sequence: Mapping[str, Any], metric: str = "logprob") -> dict[str, float]:
    """AP, BWT, FWT and mean forgetting (``continual.continual_metrics``) of one sequence."""
    return continual_metrics(performance_matrix(sequence, metric))
