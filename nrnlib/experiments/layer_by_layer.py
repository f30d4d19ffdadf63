"""Notebook 07 (Paper B, "Layer by Layer"): MOSSA, model-oriented sub-population and spectral analysis.

Models (all from the one loaded model, restored bit-exactly after each fine-tune):

- control ``C_t``: the model fully fine-tuned on task t alone (AdamW, ``profile.finetune_steps``
  steps); one per task, held-out tasks included;
- experimental ``E``: the model fully fine-tuned on the mixture of the training tasks, for
  ``finetune_steps × (number of training tasks)`` steps, so it sees each task about as often as
  that task's control does;
- experimental ``base``: the model before any of this fine-tuning.

For every task and layer: ``CKA(E, C_t)`` and ``CKA(base, C_t)`` of the residual stream at the last
prompt token of the task's test prompts (``representations.last_token_states``), linear CKA, biased
estimator (Paper B's choice) with the debiased one beside it. Held-out tasks were never seen by E.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from nrnlib import store
from nrnlib.finetune import finetune
from nrnlib.model_state import model_fingerprint, restored_after
from nrnlib.profiles import Profile
from nrnlib.representations import last_token_states, layer_cka
from nrnlib.tasks import get_task

# the code whose change invalidates cached states (nrnlib.store.code_digest)
STATES_CODE = ("finetune", "representations", "encoding", "losses", "experiments.layer_by_layer")


def _task_digest(name: str, split: str, n: int) -> str:
    task = get_task(name)
    return task.digest(list(task.split(split)[:n]))


def _train_and_read(model, train_tasks, read_tasks, steps, profile, lr, seed) -> dict[str, torch.Tensor]:
    with restored_after(model):
        if steps:
            finetune(model, [get_task(t) for t in train_tasks], steps=steps, lr=lr, seed=seed,
                     batch_size=profile.finetune_batch_size, n_train=profile.n_train, progress=False)
        return {t: last_token_states(model, get_task(t), n=profile.n_eval, batch_size=profile.batch_size,
                                     progress=False) for t in read_tasks}


def mossa_states(
    model, profile: Profile, tasks: Sequence[str], train_tasks: Sequence[str], lr: float = 1e-4, seed: int = 0,
) -> dict[str, dict[str, torch.Tensor]]:
    """States ``[layers+1, n, d_model]`` per model kind ("base", "E", "control") and task; each
    model's states are cached on disk, so an interrupted run resumes at the next model."""
    fp = model_fingerprint(model)

    def states(kind: str, trained: Sequence[str], read: Sequence[str], steps: int) -> dict[str, torch.Tensor]:
        """One model's states, cached: the key holds every train and read task's exact examples."""
        digests = {f"train:{t}": _task_digest(t, "train", profile.n_train) for t in trained}
        digests |= {f"read:{t}": _task_digest(t, "test", profile.n_eval) for t in read}
        return store.cached(
            "mossa_states", lambda: _train_and_read(model, trained, read, steps, profile, lr, seed),
            settings={"model_kind": kind, "steps": steps, "lr": lr, "seed": seed,
                      "batch_size": profile.finetune_batch_size, "batch_size_read": profile.batch_size},
            code=STATES_CODE, model=model, fingerprint=fp, tasks=digests, fmt="tensors")

    out: dict[str, dict[str, torch.Tensor]] = {"control": {}}
    out["base"] = states("base", [], tasks, 0)
    out["E"] = states("E", train_tasks, tasks, profile.finetune_steps * len(train_tasks))
    for t in tqdm(list(tasks), desc="controls"):
        out["control"][t] = states("control", [t], [t], profile.finetune_steps)[t]
    return out


def cka_curves(
    states: dict[str, dict[str, torch.Tensor]], kinds: Sequence[str] = ("linear", "debiased")
) -> pd.DataFrame:
    """Long table: task, seen (trained into E), model ("E" or "base"), estimator, layer index (0 =
    embedding, l + 1 = after block l), depth fraction, CKA with the task's control."""
    rows = []
    for task, control in states["control"].items():
        seen = get_task(task).role == "train"
        n_layers = control.shape[0] - 1
        for model_kind in ("E", "base"):
            for kind in kinds:
                for index, value in enumerate(layer_cka(states[model_kind][task], control, kind)):
                    rows.append({"task": task, "seen": seen, "model": model_kind, "estimator": kind,
                                 "layer": index, "depth": index / n_layers, "cka": value})
    return pd.DataFrame(rows)


def layer_ranges(curves: pd.DataFrame, tau: float = 0.95, estimator: str = "linear") -> dict[str, tuple[int, int]]:
    """Shared / transition / refinement layers from mean CKA curves over the tasks in ``curves``.

    With b(l) = mean_t CKA(base, C_t) and e(l) = mean_t CKA(E, C_t) at block l (embedding excluded):

    - shared: the longest run of blocks from the first with b(l) ≥ τ (fine-tuning on a task has not
      moved the representation away from the base model's);
    - transition: the following blocks with e(l) ≥ τ (the multi-task model still matches every
      single-task control although the base model no longer does);
    - refinement: the remaining blocks (the controls' task-specific representations, matched by
      neither experimental model).

    Ranges are half-open ``(first, end)`` in block indices (0-based); empty when first == end.
    """
    part = curves[(curves.estimator == estimator) & (curves.layer > 0)]
    if part.empty:
        raise ValueError(f"no CKA values for estimator {estimator!r}")
    mean = part.groupby(["model", "layer"]).cka.mean()
    b, e = mean.loc["base"].sort_index(), mean.loc["E"].sort_index()
    n = len(b)
    s = 0
    while s < n and b.iloc[s] >= tau:
        s += 1
    t = s
    while t < n and e.iloc[t] >= tau:
        t += 1
    return {"shared": (0, s), "transition": (s, t), "refinement": (t, n)}


def ranges_as_depth(ranges: dict[str, tuple[int, int]], n_layers: int) -> dict[str, str]:
    """Ranges as 1-based layer numbers and fractions of depth, e.g. "1-9 (0.03-0.28)"."""
    out = {}
    for name, (a, b) in ranges.items():
        out[name] = "none" if a == b else f"{a + 1}-{b} ({(a + 1) / n_layers:.2f}-{b / n_layers:.2f})"
    return out


def paper_b_ranges(n_layers: int = 32) -> dict[str, tuple[int, int]]:
    """Paper B's Llama-2-7B ranges (layers 1-9 shared, 10-15 transition, 16-32 refinement of 32), as
    half-open 0-based block ranges rescaled to ``n_layers`` blocks."""
    scale = n_layers / 32
    cut = [0, math.floor(9 * scale + 0.5), math.floor(15 * scale + 0.5), n_layers]
    return {"shared": (cut[0], cut[1]), "transition": (cut[1], cut[2]), "refinement": (cut[2], cut[3])}


def cka_gap(curves: pd.DataFrame, estimator: str = "linear") -> pd.DataFrame:
    """Per block (embedding excluded) and task group (seen / unseen): mean_t CKA(E, C_t) − mean_t
    CKA(base, C_t); positive where the multi-task model is closer to the single-task controls."""
    part = curves[(curves.estimator == estimator) & (curves.layer > 0)]
    mean = part.groupby(["seen", "model", "layer"]).cka.mean().unstack("model")
    gap = (mean["E"] - mean["base"]).rename("gap").reset_index()
    gap["tasks"] = gap.seen.map({True: "seen", False: "unseen"})
    return gap.drop(columns="seen")
