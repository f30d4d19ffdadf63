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
  With a ``protocol`` (``nrnlib.protocol.Protocol``; notebook 07 passes the profile's) the LoRA models
  are trained as every fine-tuned model of notebooks 03-06 is: a dev split carved from each task's
  train split, the dev loss after every epoch, training stopped when it has not improved for
  ``protocol.patience`` epochs and the adapter of the lowest dev loss kept; ``epochs`` is then the
  cap, and Paper B's cosine schedule runs over that cap, as the Hugging Face Trainer does with early
  stopping (``experiments.lbl_training``: the training, and where each model stopped).

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
Ranges, in ``experiments.ranges``: ``layer_ranges`` (one τ), ``range_sweep`` (every τ of a
grid) and ``gap_ranges`` (a rule on the E − base gap with a bootstrap CI over tasks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from nrnlib import store
from nrnlib.experiments.lbl_training import lora_run, lora_run_protocol, protocol_items, train_lora_to_convergence
from nrnlib.finetune import _encode_items, _order, _training_items, finetune
from nrnlib.lora import LoraSettings, train_lora
from nrnlib.model_state import model_fingerprint, restored_after
from nrnlib.profiles import Profile
from nrnlib.protocol import PROTOCOL_CODE, Protocol, dev_split
from nrnlib.representations import last_token_states, layer_cka
from nrnlib.tasks import get_task
from nrnlib.workers import run_jobs

METHODS = ("full", "lora")
# the code whose change invalidates cached states (nrnlib.store.code_digest)
READ_CODE = ("representations", "encoding", "losses", "experiments.layer_by_layer")
STATES_CODE = ("finetune", *READ_CODE)
LORA_CODE = ("finetune", "lora", *READ_CODE)
LORA_PROTOCOL_CODE = (*PROTOCOL_CODE, *LORA_CODE, "experiments.lbl_training")
LOSSES = "__losses__"  # key of the training loss curve in a cached states entry
# keys of the dev-loss curve (protocol runs): evaluation steps, dev losses, and [best step, steps, cap, stopped]
DEV_STEPS, DEV_LOSS, RUN = "__dev_steps__", "__dev_loss__", "__run__"
STOPPED = ("max_steps", "early", "diverged")  # RUN's last entry indexes this


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
                    profile: Profile, seed: int, n_train: int, n_read: int,
                    run: Protocol | None = None) -> dict[str, Tensor]:
    """Train a copy of ``model`` (restored afterwards) and read its states; the loss curve rides along
    under ``LOSSES`` (and, with ``run``, the model's ``lora_run`` protocol, the dev curve under
    ``DEV_STEPS``, ``DEV_LOSS``, ``RUN``)."""
    extra = {}
    with restored_after(model):
        tasks = [get_task(t) for t in train_tasks]
        if method == "full":
            train_loss = finetune(model, tasks, steps=steps, lr=lr, seed=seed, batch_size=profile.finetune_batch_size,
                                  n_train=n_train, progress=False).losses
        elif run is None:
            train_loss = train_lora(model, tasks, lora, seed=seed, n_train=n_train, progress=False).losses
        else:
            curve = train_lora_to_convergence(model, tasks, lora, run, seed=seed)
            train_loss = curve.train_loss
            extra = {DEV_STEPS: torch.tensor(curve.dev_steps, dtype=torch.int64),
                     DEV_LOSS: torch.tensor(curve.dev_loss, dtype=torch.float64),
                     RUN: torch.tensor([curve.best_step, curve.steps, run.max_steps, STOPPED.index(curve.stopped)],
                                       dtype=torch.int64)}
        out = _read(model, read_tasks, n_read, profile.batch_size)
    return {**out, LOSSES: torch.tensor(train_loss, dtype=torch.float64), **extra}


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
    workers: int | None = None, protocol: Protocol | None = None,
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
    task and test prompts read (default the profile's ``n_train`` and ``n_eval``). The models are
    trained by ``workers`` processes (``workers.run_jobs``; default ``$NRN_WORKERS``).

    ``protocol`` (method "lora" only): train each LoRA model to convergence on its dev loss
    (``train_lora_to_convergence``; ``lora.epochs`` is the cap, ``n_train`` examples per task after
    the dev split); the result then also has ``"curves": {name: {"dev_steps", "dev_loss", "best_step",
    "steps", "max_steps", "stopped"}}``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if protocol is not None and method != "lora":
        raise ValueError(f"a protocol trains the LoRA models (method='lora'), got method={method!r}")
    ceiling_tasks = _subset(ceiling, tasks, "ceiling")
    cross_tasks = _subset(cross, tasks, "cross")
    lora = LoraSettings() if lora is None else lora
    n_train = profile.n_train if n_train is None else n_train
    n_read = profile.n_eval if n_read is None else n_read
    fp = model_fingerprint(model)

    def states(kind: str, trained: Sequence[str], read: Sequence[str], steps: int, run_seed: int) -> dict:
        """One trained model's states, cached: the key holds every train and read task's exact examples."""
        run = None
        if method == "full":
            settings, code = {"steps": steps, "lr": lr, "batch_size": profile.finetune_batch_size}, STATES_CODE
        else:
            settings, code = {"lora": lora.key()}, LORA_CODE
        if protocol is None:
            digests = {f"train:{t}": _task_digest(t, "train", n_train) for t in trained}
        else:  # the dev-split train examples, the dev examples, and the protocol of this run
            run_tasks = [get_task(t) for t in trained]
            run = lora_run(run_tasks, lora, replace(protocol, n_train=n_train))
            digests = {f"train:{k}": v for t in run_tasks
                       for k, v in dev_split(t, run.dev_size, run.n_train, run.max_dev_fraction).digests().items()}
            settings["protocol"], code = run.run_settings(), LORA_PROTOCOL_CODE
        digests |= {f"read:{t}": _task_digest(t, "test", n_read) for t in read}
        settings |= {"model_kind": kind, "method": method, "seed": run_seed, "batch_size_read": profile.batch_size}
        return store.cached(
            "mossa_states", lambda: _train_and_read(model, trained, read, method=method, steps=steps, lr=lr,
                                                    lora=lora, profile=profile, seed=run_seed, n_train=n_train,
                                                    n_read=n_read, run=run),
            settings=settings, code=code, model=model, fingerprint=fp, tasks=digests, fmt="tensors")

    out: dict[str, dict] = {"base": base_states(model, profile, tasks, n_read, fp), "control": {}, "losses": {},
                            "train_tasks": list(train_tasks)}
    # every trained model is an independent cached job, shared over ``workers`` processes (E first: the longest)
    models = [("E", None), *((f"control:{t}", t) for t in tasks), *((f"ceiling:{t}", t) for t in ceiling_tasks)]
    jobs = [partial(states, "E", train_tasks, tasks, profile.finetune_steps * len(train_tasks), seed)]
    jobs += [partial(states, "control", [t], cross_tasks if t in cross_tasks else [t], profile.finetune_steps, seed)
             for t in tasks]
    jobs += [partial(states, "control", [t], [t], profile.finetune_steps, seed + 1) for t in ceiling_tasks]
    read = run_jobs(jobs, workers=workers, desc="models (E, controls, ceilings)", device=model.cfg.device)
    if cross_tasks:
        out["cross"] = {}
    if ceiling_tasks:
        out["ceiling"] = {}
    if protocol is not None:
        out["curves"] = {}
    for (name, t), got in zip(models, read, strict=True):
        got = dict(got)
        out["losses"][name] = got.pop(LOSSES)
        if protocol is not None:
            best, steps, cap, stopped = got.pop(RUN).tolist()
            out["curves"][name] = {"dev_steps": got.pop(DEV_STEPS).tolist(), "dev_loss": got.pop(DEV_LOSS).tolist(),
                                   "best_step": best, "steps": steps, "max_steps": cap, "stopped": STOPPED[stopped]}
        if t is None:
            out["E"] = got
        elif name.startswith("ceiling:"):
            out["ceiling"][t] = got[t]
        else:
            out["control"][t] = got[t]
            if t in cross_tasks:
                out["cross"][t] = {u: v for u, v in got.items() if u != t}
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
                         n_train: int, protocol: Protocol | None = None) -> tuple[int, int, int]:
    """(examples, steps, padded tokens) of ``train_lora`` on these tasks (with a ``protocol``: of
    ``train_lora_to_convergence`` run to its cap): the same examples, seeded order and batches, each
    batch padded to its longest prompt + answer."""
    tasks = [get_task(t) for t in tasks]
    items = (_training_items(tasks, n_train) if protocol is None
             else protocol_items(tasks, replace(protocol, n_train=n_train)))
    encoded = _encode_items(model, items)
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
    n_read: int | None = None, cost: Mapping[str, float] | None = None, protocol: Protocol | None = None,
) -> pd.DataFrame:
    """One row per model ``mossa_states`` (plus the floor) will train or read: model, trained_on,
    examples, steps (``lora.total_steps``), train_tokens (padded, exactly as ``train_lora`` batches
    them), reads (tasks read), read_tokens (padded prompt tokens, batches of ``profile.batch_size``).
    With a ``protocol`` the examples are those after the dev split and steps is the cap (a run stopped
    early takes fewer), and a column dev_tokens gives the padded tokens of its dev-loss evaluations up to
    the cap (one before training and one per epoch; forward passes, costed as reads).

    With ``cost`` = ``{"step_s", "train_token_s", "read_token_s"}`` (measured seconds per optimizer
    step, per padded training token and per padded read token) a column ``seconds`` =
    ``steps · step_s + train_tokens · train_token_s + (read_tokens + dev_tokens) · read_token_s``."""
    n_train = profile.n_lbl_train if n_train is None else n_train
    n_read = lbl_n_read(profile) if n_read is None else n_read
    reads = {t: _padded_read_tokens(model, t, n_read, profile.batch_size) for t in tasks}
    rows = [{"model": "base", "trained_on": "", "examples": 0, "steps": 0, "train_tokens": 0,
             "reads": len(tasks), "read_tokens": sum(reads.values())}]
    rows.append({"model": "floor (null model)", "trained_on": "", "examples": 0, "steps": 0, "train_tokens": 0,
                 "reads": len(tasks), "read_tokens": sum(reads.values())})
    dev = {t: _padded_dev_tokens(model, t, protocol) for t in tasks} if protocol is not None else {}

    def trained(name: str, on: Sequence[str], run_seed: int, read: Sequence[str]) -> dict:
        n, steps, tokens = _padded_train_tokens(model, on, lora, run_seed, n_train, protocol)
        row = {"model": name, "trained_on": "+".join(on), "examples": n, "steps": steps, "train_tokens": tokens,
               "reads": len(read), "read_tokens": sum(reads[u] for u in read)}
        if protocol is not None:
            run = lora_run_protocol(protocol, lora, n)
            row["dev_tokens"] = sum(dev[u] for u in on) * (run.max_steps // run.eval_every + 1)
        return row

    rows.append(trained("E", train_tasks, seed, tasks))
    for t in tasks:
        rows.append(trained(f"control:{t}", [t], seed, list(cross) if t in cross else [t]))
        if t in ceiling:
            rows.append(trained(f"ceiling:{t}", [t], seed + 1, [t]))
    plan = pd.DataFrame(rows).fillna({"dev_tokens": 0})
    if cost is not None:
        missing = {"step_s", "train_token_s", "read_token_s"} - set(cost)
        if missing:
            raise ValueError(f"cost needs step_s, train_token_s and read_token_s (seconds); missing {sorted(missing)}")
        plan["seconds"] = (plan.steps * cost["step_s"] + plan.train_tokens * cost["train_token_s"]
                           + (plan.read_tokens + plan.get("dev_tokens", 0)) * cost["read_token_s"])
    return plan


def _padded_dev_tokens(model, task: str, protocol: Protocol) -> int:
    """Padded prompt + answer tokens of one dev-loss evaluation of ``task`` (batches of
    ``protocol.dev_batch_size``)."""
    from nrnlib.encoding import example_ids

    split = dev_split(get_task(task), protocol.dev_size, protocol.n_train, protocol.max_dev_fraction)
    lengths = [sum(map(len, example_ids(model, split.task, ex))) for ex in split.dev]
    size = protocol.dev_batch_size
    return sum(len(lengths[i: i + size]) * max(lengths[i: i + size]) for i in range(0, len(lengths), size))
