"""Notebook 01: relevance scores of every MLP neuron for every task, the task-neuron sets, where they
sit in depth, how much tasks share, and how stable the sets are as the data grows.

Scores are computed in ``n_chunks`` disjoint chunks of the attribution examples (each cached on
disk); a task's relevance is the sum over its chunks (``attribute`` sums over examples, so this is
the relevance of the union), and two disjoint halves of the chunks give the stability check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from nrnlib.attribution import attribute
from nrnlib.neurons import NeuronSet
from nrnlib.profiles import N_CHUNKS, Profile
from nrnlib.selection import select_neurons, select_specific_neurons
from nrnlib.tasks import get_task, list_tasks

if TYPE_CHECKING:
    from transformer_lens import TransformerBridge

SELECTIONS = ("plain", "specific")


def relevance_chunks(
    model, profile: Profile, tasks: Sequence[str] | None = None, aggregation: str = "signed_sum",
    n_chunks: int = N_CHUNKS,
) -> dict[str, Float[Tensor, "chunk n_layers d_mlp"]]:
    """Per task, ``attribute`` on ``n_chunks`` disjoint consecutive chunks of the first
    ``profile.n_attribution`` train examples (clipped to the task, a multiple of ``n_chunks``; each
    chunk cached), stacked."""
    names = list(tasks) if tasks is not None else list_tasks()
    out = {}
    for name in tqdm(names, desc="attribution"):
        task = get_task(name)
        size = profile.sizes(task).n_attribution // n_chunks  # clipped to the task: equal chunks
        out[name] = torch.stack([
            attribute(model, task, n_examples=size, start=i * size, aggregation=aggregation,
                      batch_size=profile.batch_size, progress=False)
            for i in range(n_chunks)
        ])
    return out


def relevance_scores(chunks: Mapping[str, Tensor], part: slice = slice(None)) -> dict[str, Tensor]:
    """Relevance of each task over the chunks in ``part`` (all by default): the sum of chunk scores."""
    return {name: c[part].sum(0) for name, c in chunks.items()}


def neuron_sets(
    scores: Mapping[str, Tensor], k: float = 0.10, selection: str = "plain", scope: str = "global",
    method: str = "zscore", model: TransformerBridge | str | None = None,
) -> dict[str, NeuronSet]:
    """Each task's top-``k`` neurons: ``"plain"`` = Paper A's top-k of its own relevance;
    ``"specific"`` = top-k of ``specificity_scores`` against all the other tasks in ``scores``.
    ``model`` (the model the scores came from) is recorded in every set."""
    if selection == "plain":
        return {t: select_neurons(s, k=k, scope=scope, name=t, model=model) for t, s in scores.items()}
    if selection == "specific":
        return {t: select_specific_neurons(scores, t, k=k, method=method, scope=scope, model=model)
                for t in scores}
    raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")


def depth_table(sets: Mapping[str, NeuronSet], selection: str = "") -> pd.DataFrame:
    """Long table: task, layer (0-based), block (1-based, as in the papers and the figures), depth
    (layer / (n_layers-1)), count and share of the set in each layer."""
    rows = []
    for task, s in sets.items():
        counts = s.counts_per_layer()
        for layer, n in enumerate(counts.tolist()):
            rows.append({"selection": selection, "task": task, "layer": layer, "block": layer + 1,
                         "depth": layer / max(1, s.n_layers - 1), "count": n,
                         "fraction_of_layer": n / s.d_mlp, "share_of_set": n / max(1, s.count)})
    return pd.DataFrame(rows)


def iou_table(sets: Mapping[str, NeuronSet], others: Mapping[str, NeuronSet] | None = None) -> pd.DataFrame:
    """Task x task matrix of IoU |A ∩ B| / |A ∪ B| (rows: ``sets``; columns: ``others`` or ``sets``)."""
    others = sets if others is None else others
    return pd.DataFrame([[sets[a].iou(others[b]) for b in others] for a in sets], index=list(sets),
                        columns=list(others))


def mean_off_diagonal(matrix: pd.DataFrame) -> float:
    """Mean of a square task x task matrix over pairs of different tasks."""
    values = matrix.to_numpy(dtype=float)
    n = len(values)
    if n < 2 or values.shape != (n, n):
        raise ValueError(f"need a square matrix of at least two tasks, got shape {values.shape}")
    return float((values.sum() - values.trace()) / (n * n - n))


def stability_table(
    chunks: Mapping[str, Tensor], k: float = 0.10, selections: Sequence[str] = SELECTIONS
) -> pd.DataFrame:
    """IoU between the sets found on two disjoint halves of the attribution data, for growing sample
    counts: with C chunks, half A = chunks [0, m), half B = chunks [C/2, C/2 + m), m = 1, 2, 4, ..., C/2.
    A random set of the same size has expected IoU ≈ k / (2 − k) (the chance line)."""
    n_chunks = len(next(iter(chunks.values())))
    half = n_chunks // 2
    rows = []
    m = 1
    while m <= half:
        a = relevance_scores(chunks, slice(0, m))
        b = relevance_scores(chunks, slice(half, half + m))
        for selection in selections:
            sets_a, sets_b = neuron_sets(a, k, selection), neuron_sets(b, k, selection)
            for task in chunks:
                rows.append({"selection": selection, "task": task, "chunks_per_half": m,
                             "iou": sets_a[task].iou(sets_b[task]), "chance": k / (2 - k)})
        m *= 2
    return pd.DataFrame(rows)
