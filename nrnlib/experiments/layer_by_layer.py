"""Notebook 07 (Paper B, "Layer by Layer"): MOSSA, model-oriented sub-population and spectral analysis.

Models (all from the one loaded model, restored bit-exactly after each fine-tune):

- control ``C_t``: the model fine-tuned on task t alone; one per task, held-out tasks included;
- experimental ``E``: the model fine-tuned on the mixture of the training tasks;
- experimental ``base``: the model before any of this fine-tuning.

Two training methods (``method``):

- ``"full"`` (default, for backward compatibility): every parameter, AdamW at ``lr``,
  ``profile.finetune_steps`` steps per control and ``finetune_steps × (number of training tasks)``
  for E, so E sees each task about as often as that task's control does;
- ``"lora"`` (notebook 07): Paper B's protocol (``nrnlib.lora``: LoRA on q_proj and v_proj, r 8, α 16, lr 5e-5,
  cosine, ``epochs`` over the training examples, 16 per step, from ``LoraSettings``); E then passes
  over the union of the training tasks' examples as many times as each control over its own.

For every task and layer: ``CKA(E, C_t)`` and ``CKA(base, C_t)`` of the residual stream at the last
prompt token of the task's test prompts (``representations.last_token_states``), linear CKA, biased
estimator (Paper B's choice) with the debiased one beside it. Held-out tasks were never seen by E.

Reference curves (optional, ``mossa_states(..., ceiling=True, cross=True)``, ``cka_curves(floor=...)``):

- **ceiling** ``CKA(C_t', C_t)``: a second control of the same task trained with seed + 1 (other data
  order, other LoRA init): how similar two equally trained models are, the most E can reach;
- **floor** ``CKA(N, C_t)``: the states of the null model (``load_model("smollm2-135m-random")``,
  read through ``base_states``): the similarity that needs no learned features at all;
- **cross-task** ``CKA(C_u, C_t)`` on task t's prompts, u ≠ t: a control trained on another task. Where
  E matches C_t no better than C_u does, what E shares with C_t is generic (answer format, chat
  template), not task t.

Biased linear CKA is inflated when the number of prompts n is below the width d (576 for SmolLM2):
``primary_estimator(n, d)`` is ``"debiased"`` there, and ``cka_curves`` marks the primary rows.
Ranges: ``layer_ranges`` (one τ), ``range_sweep`` (every τ of a grid) and ``gap_ranges`` (a rule on
the E − base gap with a bootstrap CI over tasks).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from nrnlib import store
from nrnlib.claims import N_BOOT, bootstrap_ci
from nrnlib.finetune import finetune
from nrnlib.lora import LoraSettings, train_lora
from nrnlib.model_state import model_fingerprint, restored_after
from nrnlib.profiles import Profile
from nrnlib.representations import last_token_states, layer_cka
from nrnlib.tasks import get_task

METHODS = ("full", "lora")
# the code whose change invalidates cached states (nrnlib.store.code_digest)
READ_CODE = ("representations", "encoding", "losses", "experiments.layer_by_layer")
STATES_CODE = ("finetune", *READ_CODE)
LORA_CODE = ("finetune", "lora", *READ_CODE)
TAU_GRID = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.50, 0.55, ..., 0.95
LOSSES = "__losses__"  # key of the training loss curve in a cached states entry


def _task_digest(name: str, split: str, n: int) -> str:
    task = get_task(name)
    return task.digest(list(task.split(split)[:n]))


def primary_estimator(n: int, d: int) -> str:
    """``"debiased"`` when there are fewer prompts than dimensions (n < d: biased CKA is inflated),
    else ``"linear"`` (the biased estimator, Paper B's)."""
    return "debiased" if n < d else "linear"


def _read(model, read_tasks: Sequence[str], n_read: int, batch_size: int
          ) -> dict[str, Float[Tensor, "layers n d_model"]]:
    return {t: last_token_states(model, get_task(t), n=n_read, batch_size=batch_size, progress=False)
            for t in read_tasks}


def _train_and_read(model, train_tasks, read_tasks, *, method: str, steps: int, lr: float, lora: LoraSettings,
                    profile: Profile, seed: int, n_train: int, n_read: int) -> dict[str, Tensor]:
    """Train a copy of ``model`` (restored afterwards) and read its states; the loss curve rides along
    under ``LOSSES``."""
    with restored_after(model):
        tasks = [get_task(t) for t in train_tasks]
        if method == "full":
            log = finetune(model, tasks, steps=steps, lr=lr, seed=seed, batch_size=profile.finetune_batch_size,
                           n_train=n_train, progress=False)
        else:
            log = train_lora(model, tasks, lora, seed=seed, n_train=n_train, progress=False)
        out = _read(model, read_tasks, n_read, profile.batch_size)
    return {**out, LOSSES: torch.tensor(log.losses, dtype=torch.float64)}


def base_states(
    model, profile: Profile, tasks: Sequence[str], n_read: int | None = None, fingerprint: str | None = None,
) -> dict[str, Float[Tensor, "layers n d_model"]]:
    """States of ``model`` as it is (no training) on each task's first ``n_read`` (default
    ``profile.n_eval``) test prompts, cached: the experimental model ``base`` for the loaded model,
    and the floor when ``model`` is the null model."""
    n_read = profile.n_eval if n_read is None else n_read
    digests = {f"read:{t}": _task_digest(t, "test", n_read) for t in tasks}
    return store.cached("mossa_states", lambda: _read(model, list(tasks), n_read, profile.batch_size),
                        settings={"model_kind": "base", "batch_size_read": profile.batch_size},
                        code=READ_CODE, model=model, fingerprint=fingerprint, tasks=digests, fmt="tensors")


def _subset(choice: bool | Sequence[str], tasks: Sequence[str], name: str) -> list[str]:
    """``True``: every task; ``False``: none; a sequence: those tasks (each must be one of ``tasks``)."""
    if isinstance(choice, bool):
        return list(tasks) if choice else []
    if isinstance(choice, str) or not isinstance(choice, Sequence):
        raise ValueError(f"{name} must be True, False or a list of task names, got {choice!r}")
    unknown = [t for t in choice if t not in tasks]
    if unknown:
        raise ValueError(f"{name} names tasks that are not among the tasks read, {list(tasks)}: {unknown}")
    return [t for t in tasks if t in choice]


def mossa_states(
    model, profile: Profile, tasks: Sequence[str], train_tasks: Sequence[str], lr: float = 1e-4, seed: int = 0,
    method: str = "full", lora: LoraSettings | None = None, ceiling: bool | Sequence[str] = False,
    cross: bool | Sequence[str] = False, n_train: int | None = None, n_read: int | None = None,
) -> dict[str, dict]:
    """States ``[layers+1, n, d_model]`` per model kind and task; each trained model's states are one
    cache entry (key: model fingerprint, method and its settings, seed, the exact train and read
    examples, code), so an interrupted run resumes at the next model.

    Returns ``{"base": {t: S}, "E": {t: S}, "control": {t: S_t(C_t)}, "losses": {name: curve},
    "train_tasks": [...]}`` and, with ``ceiling``, ``"ceiling": {t: S_t(C_t trained with seed + 1)}``;
    with ``cross`` every control reads every task, ``"cross": {u: {t: S_t(C_u)}}`` for u ≠ t.
    ``ceiling`` / ``cross`` may also name a subset of ``tasks``: a ceiling for those tasks only, and
    cross-task reads among those tasks only (each of their controls reads the others' prompts), to
    fit a CPU budget. ``method``: ``"full"`` (``lr``, ``profile.finetune_steps``) or ``"lora"``
    (``lora``, default ``LoraSettings()``: Paper B's). ``n_train`` / ``n_read``: training examples per
    task and test prompts read (default the profile's ``n_train`` and ``n_eval``).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    ceiling_tasks = _subset(ceiling, tasks, "ceiling")
    cross_tasks = _subset(cross, tasks, "cross")
    lora = LoraSettings() if lora is None else lora
    n_train = profile.n_train if n_train is None else n_train
    n_read = profile.n_eval if n_read is None else n_read
    fp = model_fingerprint(model)

    def states(kind: str, trained: Sequence[str], read: Sequence[str], steps: int, run_seed: int) -> dict:
        """One trained model's states, cached: the key holds every train and read task's exact examples."""
        digests = {f"train:{t}": _task_digest(t, "train", n_train) for t in trained}
        digests |= {f"read:{t}": _task_digest(t, "test", n_read) for t in read}
        if method == "full":
            settings = {"steps": steps, "lr": lr, "batch_size": profile.finetune_batch_size}
        else:
            settings = {"lora": lora.key()}
        settings |= {"model_kind": kind, "method": method, "seed": run_seed, "batch_size_read": profile.batch_size}
        return store.cached(
            "mossa_states", lambda: _train_and_read(model, trained, read, method=method, steps=steps, lr=lr,
                                                    lora=lora, profile=profile, seed=run_seed, n_train=n_train,
                                                    n_read=n_read),
            settings=settings, code=STATES_CODE if method == "full" else LORA_CODE, model=model, fingerprint=fp,
            tasks=digests, fmt="tensors")

    out: dict[str, dict] = {"base": base_states(model, profile, tasks, n_read, fp), "control": {}, "losses": {},
                            "train_tasks": list(train_tasks)}
    e = states("E", train_tasks, tasks, profile.finetune_steps * len(train_tasks), seed)
    out["losses"]["E"] = e.pop(LOSSES)
    out["E"] = e
    if cross_tasks:
        out["cross"] = {}
    if ceiling_tasks:
        out["ceiling"] = {}
    for t in tqdm(list(tasks), desc="controls"):
        read = cross_tasks if t in cross_tasks else [t]
        c = states("control", [t], read, profile.finetune_steps, seed)
        out["losses"][f"control:{t}"] = c.pop(LOSSES)
        out["control"][t] = c[t]
        if t in cross_tasks:
            out["cross"][t] = {u: s for u, s in c.items() if u != t}
        if t in ceiling_tasks:
            c2 = states("control", [t], [t], profile.finetune_steps, seed + 1)
            out["losses"][f"ceiling:{t}"] = c2.pop(LOSSES)
            out["ceiling"][t] = c2[t]
    return out


def _rows(task: str, seen: bool, model: str, other: str, a: Float[Tensor, "layers n p"],
          b: Float[Tensor, "layers n d"], kinds: Sequence[str]) -> list[dict]:
    n_layers, n, d = b.shape[0] - 1, b.shape[1], b.shape[2]
    primary = primary_estimator(n, d)
    return [{"task": task, "seen": seen, "model": model, "other": other, "estimator": kind, "layer": index,
             "depth": index / n_layers, "cka": value, "primary": kind == primary, "n": n}
            for kind in kinds for index, value in enumerate(layer_cka(a, b, kind))]


def cka_curves(
    states: Mapping[str, Mapping], kinds: Sequence[str] = ("linear", "debiased"),
    floor: Mapping[str, Tensor] | None = None,
) -> pd.DataFrame:
    """Long table, one row per task, model, estimator and layer index (0 = embedding, l + 1 = after
    block l): task, seen (trained into E), model, other, estimator, layer, depth, cka (with the task's
    control ``C_t``), primary (the estimator ``primary_estimator(n, d)`` picks), n (prompts).

    ``model``: ``"E"`` and ``"base"``; ``"ceiling"`` (``C_t`` of seed + 1) where ``states`` has a
    ceiling; ``"floor"`` (the null model's states ``floor[t]``, from ``base_states`` on it) where
    ``floor`` is given; ``"cross"`` (``C_u`` read on t's prompts, ``other`` = u) where ``states`` has
    cross-task reads. ``other`` is "" elsewhere. A task is *seen* when E was trained on it
    (``states["train_tasks"]``, from ``mossa_states``; without that key, when its role is "train")."""
    trained = states.get("train_tasks")
    rows = []
    for task, control in states["control"].items():
        seen = task in trained if trained is not None else get_task(task).role == "train"
        for model_kind in ("E", "base"):
            rows += _rows(task, seen, model_kind, "", states[model_kind][task], control, kinds)
        if task in states.get("ceiling", {}):
            rows += _rows(task, seen, "ceiling", "", states["ceiling"][task], control, kinds)
        if floor is not None:
            rows += _rows(task, seen, "floor", "", floor[task], control, kinds)
        for other, reads in states.get("cross", {}).items():
            if task in reads:
                rows += _rows(task, seen, "cross", other, reads[task], control, kinds)
    return pd.DataFrame(rows)


def _estimator(curves: pd.DataFrame, estimator: str | None) -> str:
    """``estimator``, or (None) the primary one of ``curves`` (debiased wherever some task has n < d)."""
    if estimator is not None:
        return estimator
    if "primary" not in curves:
        return "linear"
    primaries = set(curves[curves.primary].estimator)
    return "debiased" if "debiased" in primaries else "linear"


def mean_curves(curves: pd.DataFrame, estimator: str | None = None, n_boot: int = N_BOOT) -> pd.DataFrame:
    """Per curve and block (embedding excluded): the mean CKA over tasks and its percentile-bootstrap
    95% CI over tasks. Curves: ``"{model} vs C_t, {seen|unseen} tasks"`` for E and base, and one curve
    each, over all tasks, for ``"ceiling: C_t (seed + 1) vs C_t"``, ``"floor: random-init vs C_t"`` and
    ``"cross-task: C_u vs C_t"`` (first averaged over u per task). ``estimator`` None: the primary one."""
    estimator = _estimator(curves, estimator)
    part = curves[(curves.estimator == estimator) & (curves.layer > 0)]
    part = part.groupby(["task", "seen", "model", "layer"], as_index=False).cka.mean()  # cross: mean over u
    labels = {"ceiling": "ceiling: C_t (seed + 1) vs C_t", "floor": "floor: random-init vs C_t",
              "cross": "cross-task: C_u vs C_t"}
    part["curve"] = [labels.get(m, f"{m} vs C_t, {'seen' if s else 'unseen'} tasks")
                     for m, s in zip(part.model, part.seen, strict=True)]
    rows = []
    for (curve, layer), group in part.groupby(["curve", "layer"], sort=False):
        values = group.cka.dropna().to_numpy()
        low = high = float("nan")
        if len(values) >= 2 and np.ptp(values) > 0:
            ci = bootstrap_ci(values, n_boot=n_boot)
            low, high = ci.ci_low, ci.ci_high
        rows.append({"curve": curve, "layer": int(layer), "cka": float(np.mean(values)) if len(values) else np.nan,
                     "ci_low": low, "ci_high": high, "n_tasks": len(values), "estimator": estimator})
    return pd.DataFrame(rows)


def range_sweep(
    curves: pd.DataFrame, taus: Sequence[float] = TAU_GRID, estimator: str | None = None,
) -> pd.DataFrame:
    """``layer_ranges`` at every τ of ``taus``: one row per τ and range (shared, transition,
    refinement) with its half-open block range ``[first, end)`` and its length ``blocks``.
    ``estimator`` None: the primary one of ``curves``."""
    estimator = _estimator(curves, estimator)
    rows = []
    for tau in taus:
        for name, (first, end) in layer_ranges(curves, float(tau), estimator).items():
            rows.append({"tau": float(tau), "range": name, "first": first, "end": end, "blocks": end - first,
                         "estimator": estimator})
    return pd.DataFrame(rows)


def gap_ranges(
    curves: pd.DataFrame, delta: float = 0.0, estimator: str | None = None, n_boot: int = N_BOOT,
) -> tuple[dict[str, tuple[int, int]], pd.DataFrame]:
    """Ranges from the gap between E and base, decided per block with a CI over tasks.

    Per task t and block l: ``g_t(l) = CKA(E, C_t) − CKA(base, C_t)``; per block the mean over tasks
    with its percentile-bootstrap 95% CI over tasks (``claims.bootstrap_ci``). Block l is *closer*
    when the whole CI lies above ``delta`` (E is nearer to the single-task controls than base is).

    - transition: the longest run of consecutive closer blocks (the first such run on a tie);
    - shared: the blocks before it; refinement: the blocks after it.

    Without any closer block the rule finds no transition and does not split the rest: all three
    ranges are empty. Returns the ranges (half-open 0-based block indices) and the per-block table
    (block, gap, ci_low, ci_high, closer). Pass the seen or the unseen tasks' rows, not both mixed,
    unless that mixture is what you mean."""
    estimator = _estimator(curves, estimator)
    part = curves[(curves.estimator == estimator) & (curves.layer > 0) & curves.model.isin(["E", "base"])]
    wide = part.pivot_table(index=["layer", "task"], columns="model", values="cka").dropna()
    if wide.empty:
        raise ValueError(f"no CKA values of E and base for estimator {estimator!r}")
    gaps = (wide["E"] - wide["base"]).rename("gap").reset_index()
    rows = []
    for layer, group in gaps.groupby("layer"):
        values = group.gap.to_numpy()
        if len(values) >= 2 and np.ptp(values) > 0:
            ci = bootstrap_ci(values, n_boot=n_boot)
            low, high = ci.ci_low, ci.ci_high
        else:  # one task, or all tasks equal: the CI is the value itself
            low = high = float(values.mean())
        rows.append({"block": int(layer) - 1, "gap": float(values.mean()), "ci_low": low, "ci_high": high,
                     "closer": bool(low > delta), "n_tasks": len(values)})
    table = pd.DataFrame(rows).sort_values("block", ignore_index=True)
    n = int(table.block.max()) + 1
    closer_blocks = set(table.block[table.closer])
    best, run_start = (0, 0), None
    for i, closer in enumerate([b in closer_blocks for b in range(n)] + [False]):
        if closer and run_start is None:
            run_start = i
        elif not closer and run_start is not None:
            if i - run_start > best[1] - best[0]:
                best = (run_start, i)
            run_start = None
    if best[1] == best[0]:
        return {"shared": (0, 0), "transition": (0, 0), "refinement": (0, 0)}, table
    return {"shared": (0, best[0]), "transition": best, "refinement": (best[1], n)}, table


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


# --------------------------------------------------------------------------------------------------
# notebook 07 on Paper B's protocol: tasks, LoRA settings, the plan of models, loss curves
# --------------------------------------------------------------------------------------------------

# Held-out tasks that share no label with a training task: headline_topic shares news_topic's five
# labels, and definition inverts reverse_dictionary (word → gloss against gloss → word), so neither is
# unseen in Paper B's sense.
UNSEEN = ("question_topic", "wordnet_category", "antonym", "hypernym")


def check_unseen(seen: Sequence[str], unseen: Sequence[str]) -> None:
    """``ValueError`` when an unseen task is also seen, has role "train", or is a classification task
    sharing a label word with a seen task (E would have learned to produce its answers)."""
    if not seen:
        raise ValueError("notebook 07 needs at least one seen task (the tasks E is trained on)")
    both = sorted(set(seen) & set(unseen))
    if both:
        raise ValueError(f"tasks listed as both seen and unseen: {both}")
    labels = {t: {w.lower() for w in get_task(t).labels or ()} for t in seen}
    for u in unseen:
        task = get_task(u)
        if task.role == "train":
            raise ValueError(f"unseen task {u!r} has role 'train': E may be trained on it; pick held-out tasks")
        shared = {t: sorted(labels[t] & {w.lower() for w in task.labels or ()}) for t in seen}
        shared = {t: s for t, s in shared.items() if s}
        if shared:
            raise ValueError(f"unseen task {u!r} shares labels with seen tasks {shared}: E learned those answers, "
                             "so the task is not unseen; drop it from the unseen tasks")


def lbl_tasks(profile: Profile) -> tuple[list[str], list[str]]:
    """Notebook 07's (seen, unseen) tasks: ``profile.lbl_seen`` (None: every registered task of role
    "train") and ``profile.lbl_unseen``, checked by :func:`check_unseen`."""
    from nrnlib.tasks import list_tasks

    seen = list(profile.lbl_seen) if profile.lbl_seen is not None else [
        t for t in list_tasks() if get_task(t).role == "train"]
    unseen = list(profile.lbl_unseen)
    check_unseen(seen, unseen)
    return seen, unseen


def lbl_lora(profile: Profile) -> LoraSettings:
    """Notebook 07's LoRA settings: Paper B's (``LoraSettings()``) with the profile's learning rate,
    epochs and batch size (``lbl_lora_lr``, ``lbl_lora_epochs``, ``lbl_lora_batch_size``)."""
    return LoraSettings(lr=profile.lbl_lora_lr, epochs=profile.lbl_lora_epochs, batch_size=profile.lbl_lora_batch_size)


def lbl_n_read(profile: Profile) -> int:
    """Test prompts read per task: ``profile.n_lbl_read``, else ``profile.n_eval``."""
    return profile.n_lbl_read if profile.n_lbl_read is not None else profile.n_eval


def _padded_train_tokens(model, tasks: Sequence[str], lora: LoraSettings, seed: int,
                         n_train: int) -> tuple[int, int, int]:
    """(examples, steps, padded tokens) of ``train_lora`` on these tasks: the same examples, seeded
    order and batches, each batch padded to its longest prompt + answer."""
    from nrnlib.finetune import _encode_items, _order, _training_items

    encoded = _encode_items(model, _training_items([get_task(t) for t in tasks], n_train))
    steps = lora.total_steps(len(encoded))
    order = _order(len(encoded), seed)
    tokens = 0
    for _ in range(steps):
        tokens += lora.batch_size * max(len(p) + len(a) for p, a in (encoded[next(order)]
                                                                     for _ in range(lora.batch_size)))
    return len(encoded), steps, tokens


def _padded_read_tokens(model, task: str, n_read: int, batch_size: int) -> int:
    """Padded prompt tokens ``last_token_states`` runs for ``task``'s first ``n_read`` test prompts."""
    from nrnlib.encoding import example_ids

    lengths = [len(example_ids(model, get_task(task), ex, with_answer=False)[0])
               for ex in list(get_task(task).split("test"))[:n_read]]
    return sum(len(lengths[i: i + batch_size]) * max(lengths[i: i + batch_size])
               for i in range(0, len(lengths), batch_size))


def lbl_plan(
    model, profile: Profile, tasks: Sequence[str], train_tasks: Sequence[str], lora: LoraSettings,
    ceiling: Sequence[str] = (), cross: Sequence[str] = (), seed: int = 0, n_train: int | None = None,
    n_read: int | None = None, cost: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """One row per model ``mossa_states`` (plus the floor) will train or read: model, trained_on,
    examples, steps (``lora.total_steps``), train_tokens (padded, exactly as ``train_lora`` batches
    them), reads (tasks read), read_tokens (padded prompt tokens, batches of ``profile.batch_size``).

    With ``cost`` = ``{"step_s", "train_token_s", "read_token_s"}`` (measured seconds per optimizer
    step, per padded training token and per padded read token) a column ``seconds`` =
    ``steps · step_s + train_tokens · train_token_s + read_tokens · read_token_s``."""
    n_train = profile.n_lbl_train if n_train is None else n_train
    n_read = lbl_n_read(profile) if n_read is None else n_read
    reads = {t: _padded_read_tokens(model, t, n_read, profile.batch_size) for t in tasks}
    rows = [{"model": "base", "trained_on": "", "examples": 0, "steps": 0, "train_tokens": 0,
             "reads": len(tasks), "read_tokens": sum(reads.values())}]
    rows.append({"model": "floor (null model)", "trained_on": "", "examples": 0, "steps": 0, "train_tokens": 0,
                 "reads": len(tasks), "read_tokens": sum(reads.values())})
    n, steps, tokens = _padded_train_tokens(model, train_tasks, lora, seed, n_train)
    rows.append({"model": "E", "trained_on": "+".join(train_tasks), "examples": n, "steps": steps,
                 "train_tokens": tokens, "reads": len(tasks), "read_tokens": sum(reads.values())})
    for t in tasks:
        n, steps, tokens = _padded_train_tokens(model, [t], lora, seed, n_train)
        read = list(cross) if t in cross else [t]
        rows.append({"model": f"control:{t}", "trained_on": t, "examples": n, "steps": steps, "train_tokens": tokens,
                     "reads": len(read), "read_tokens": sum(reads[u] for u in read)})
        if t in ceiling:
            n, steps, tokens = _padded_train_tokens(model, [t], lora, seed + 1, n_train)
            rows.append({"model": f"ceiling:{t}", "trained_on": t, "examples": n, "steps": steps,
                         "train_tokens": tokens, "reads": 1, "read_tokens": reads[t]})
    plan = pd.DataFrame(rows)
    if cost is not None:
        missing = {"step_s", "train_token_s", "read_token_s"} - set(cost)
        if missing:
            raise ValueError(f"cost needs step_s, train_token_s and read_token_s (seconds); missing {sorted(missing)}")
        plan["seconds"] = (plan.steps * cost["step_s"] + plan.train_tokens * cost["train_token_s"]
                           + plan.read_tokens * cost["read_token_s"])
    return plan


def loss_table(losses: Mapping[str, Float[Tensor, " steps"]]) -> pd.DataFrame:
    """Long table of training loss curves (``mossa_states(...)["losses"]``): model, step (1-based), loss."""
    return pd.DataFrame([{"model": name, "step": i + 1, "loss": float(v)}
                         for name, curve in losses.items() for i, v in enumerate(curve.tolist())])


def loss_summary(losses: Mapping[str, Float[Tensor, " steps"]]) -> pd.DataFrame:
    """Per model: steps; loss_first / loss_last, the mean loss over the first and the last fifth of the
    steps (at least one step each); fall = loss_first − loss_last; last_half_change, the least-squares
    slope of the loss over the last half of the steps times their number (how much the loss still
    moved at the end: near 0 once it has flattened; NaN with fewer than 4 steps)."""
    rows = []
    for name, curve in losses.items():
        y = np.asarray(curve.tolist(), dtype=float)
        if y.size == 0:
            raise ValueError(f"loss curve {name!r} is empty")
        k = max(1, y.size // 5)
        tail = y[y.size // 2:]
        change = float(np.polyfit(np.arange(tail.size), tail, 1)[0] * tail.size) if y.size >= 4 else float("nan")
        rows.append({"model": name, "steps": int(y.size), "loss_first": float(y[:k].mean()),
                     "loss_last": float(y[-k:].mean()), "fall": float(y[:k].mean() - y[-k:].mean()),
                     "last_half_change": change})
    return pd.DataFrame(rows)
