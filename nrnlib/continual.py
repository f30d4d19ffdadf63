"""Continual-learning bookkeeping (Paper A, Table 3): the performance matrix of a task sequence and
the standard metrics computed from it.

A sequence trains tasks ``D_0 … D_{T-1}`` one after another. ``R`` is a ``[T + 1, T]`` array: row 0
holds every task's score before any training (the issue's ``R[-1, j]``), row ``i + 1`` the scores
after training task ``i``. Scores are "higher is better" (accuracy, ROUGE-L, log-prob).

- average performance ``AP = mean_j R[T, j]`` (after the last task);
- backward transfer ``BWT = 1/(T-1) Σ_{j<T-1} (R[T, j] − R[j+1, j])`` (negative = forgetting;
  Lopez-Paz & Ranzato 2017);
- forward transfer ``FWT = 1/(T-1) Σ_{j≥1} (R[j, j] − R[0, j])``: the score on task j just before it
  is trained, against the untrained model's (Lopez-Paz & Ranzato's ``b̄_j`` is the initial model here);
- forgetting of task ``j < T-1``: ``f_j = max_{j+1 ≤ l ≤ T-1} R[l, j] − R[T, j]`` (Chaudhry et al.
  2018: the best score it ever had after being learned, minus its final score).
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float


def check_matrix(r: Float[np.ndarray, "t_plus_1 t"]) -> np.ndarray:
    """``r`` as a float array of shape ``[T + 1, T]`` with T ≥ 2 and finite entries."""
    r = np.asarray(r, dtype=float)
    if r.ndim != 2 or r.shape[0] != r.shape[1] + 1 or r.shape[1] < 2:
        raise ValueError(f"R must be [T + 1, T] with T >= 2 (row 0: before training), got shape {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError("R contains NaN or inf: every (stage, task) score is needed")
    return r


def average_performance(r: Float[np.ndarray, "t_plus_1 t"]) -> float:
    return float(check_matrix(r)[-1].mean())


def backward_transfer(r: Float[np.ndarray, "t_plus_1 t"]) -> float:
    r = check_matrix(r)
    t = r.shape[1]
    return float(np.mean([r[t, j] - r[j + 1, j] for j in range(t - 1)]))


def forward_transfer(r: Float[np.ndarray, "t_plus_1 t"]) -> float:
    r = check_matrix(r)
    t = r.shape[1]
    return float(np.mean([r[j, j] - r[0, j] for j in range(1, t)]))


def forgetting(r: Float[np.ndarray, "t_plus_1 t"]) -> Float[np.ndarray, " t_minus_1"]:
    """Per task ``j < T-1``: its best score after being learned minus its final score (≥ 0 means lost)."""
    r = check_matrix(r)
    t = r.shape[1]
    return np.array([r[j + 1: t, j].max() - r[t, j] for j in range(t - 1)])


def continual_metrics(r: Float[np.ndarray, "t_plus_1 t"]) -> dict[str, float]:
    """AP, BWT, FWT and mean forgetting of one performance matrix."""
    return {"AP": average_performance(r), "BWT": backward_transfer(r), "FWT": forward_transfer(r),
            "forgetting": float(forgetting(r).mean())}
