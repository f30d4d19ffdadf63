# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 — Detecting task-specific neurons by gradient attribution
#
# Paper A (Leng & Xiong) asks whether a language model has *task-specific neurons*: MLP units whose
# removal would hurt one task much more than others. It scores every neuron by a first-order
# estimate of how much the task's loss would change if the neuron were switched off.
#
# **Relevance.** For neuron $j$ of layer $l$ with output $\omega^l_j$ (at the hook
# `blocks.{l}.mlp.hook_post`, the input of the down projection) and the task loss $L$ (mean
# cross-entropy over the answer tokens of one example), zeroing the neuron at every position changes
# the loss by about
# $$\Delta L \approx -\sum_{\text{pos}} \frac{\partial L}{\partial \omega^l_j}\,\omega^l_j ,
# \qquad R^l_j = \sum_{\text{ex}} \Bigl|\sum_{\text{pos}} \partial_{\omega^l_j} L \cdot \omega^l_j\Bigr| .$$
# One forward and one backward per batch give $R$ for all 46,080 neurons at once; no parameter
# gradient is computed.
#
# **Two selections.** *Plain* (the paper's): the global top $k$ = 10% of neurons by $R$ for the task.
# Plain top-$k$ also picks neurons that matter for *every* task (generally important neurons), so we
# add a *specificity-aware* selection: normalise each task's relevance to a distribution over
# neurons scaled to mean 1, $q_t = N\,R_t / \sum R_t$, and rank neurons by the z-score
# $$z_t = \frac{q_t - \operatorname{mean}_{u \ne t} q_u}{\operatorname{std}_u q_u},$$
# how far the task's relevance stands above the other tasks' (std over all tasks). Its top $k$ is the
# *specific* set.
#
# This notebook computes relevance for every task, then shows where the sets sit in depth, how much
# tasks share, and how stable a set is when it is found from two disjoint halves of the data.

# %% tags=["parameters"]
MODEL = "smollm2-135m-instruct"
PROFILE = None  # None: $NRN_PROFILE, else "full" on a GPU and "standard" on a CPU; "smoke" for a quick look
K = 0.10  # fraction of all neurons in a task's set (Paper A: 10%)

# %%
import time

from nrnlib import experiments, plots
from nrnlib.models import load_model
from nrnlib.profiles import get_profile
from nrnlib.results import save_results

profile = get_profile(PROFILE)
tasks = profile.task_names()
print(f"profile: {profile.name}: {profile.n_attribution} attribution examples per task (train split), "
      f"{len(tasks)} tasks, k = {K:.0%}")
started = time.perf_counter()
model = load_model(MODEL)

# %% [markdown]
# ## Relevance of every neuron for every task
# The attribution examples are split into 8 disjoint chunks, each scored and cached on disk; a task's
# relevance is the sum over its chunks (relevance is a sum over examples).

# %%
chunks = experiments.relevance_chunks(model, profile, tasks)
scores = experiments.relevance_scores(chunks)
sets = {selection: experiments.neuron_sets(scores, K, selection) for selection in ("plain", "specific")}
for selection, by_task in sets.items():
    print(selection, {t: s.count for t, s in by_task.items()})

# %% [markdown]
# ## Where in depth do task neurons sit?
# The fraction of each layer's 1,536 neurons that belong to a task's set (a uniform set would give
# k everywhere).

# %%
depth = {sel: experiments.depth_table(s, sel) for sel, s in sets.items()}
matrices = {f"{sel} top-{K:.0%}": d.pivot(index="task", columns="layer", values="fraction_of_layer")
            for sel, d in depth.items()}
fig = plots.heatmaps_figure(matrices, f"Share of each layer's neurons in the task's set ({profile.name})",
                            "fraction of layer", zmin=0)
plots.save_figure(fig, "01_depth_heatmap", width=1200, height=500)
fig

# %% [markdown]
# ## How much do tasks share?
# Intersection over union of the task-neuron sets, task × task. Two random sets of 10% have an
# expected IoU of $k/(2-k) \approx 0.053$.

# %%
ious = {f"{sel} top-{K:.0%}": experiments.iou_table(s) for sel, s in sets.items()}
fig = plots.heatmaps_figure(ious, f"IoU of task-neuron sets ({profile.name})", "IoU", zmin=0, zmax=1)
plots.save_figure(fig, "01_iou_heatmap", width=1200, height=550)
fig

# %% [markdown]
# ## Stability: the sets found on two disjoint halves of the data
# IoU between the set found from the first $m$ chunks and the set from $m$ chunks of the other half,
# as $m$ grows. High IoU at few examples means the set is a property of the task, not of the sample.

# %%
stability = experiments.stability_table(chunks, K)
stability["examples_per_half"] = stability.chunks_per_half * max(1, profile.n_attribution // 8)
fig = plots.lines_figure(stability, "examples_per_half", "iou", "task", f"Set stability across data halves "
                         f"({profile.name})", facet_col="selection", chance=K / (2 - K), log_x=True,
                         labels={"examples_per_half": "attribution examples per half", "iou": "IoU"})
plots.save_figure(fig, "01_stability", width=1100, height=450)
fig

# %% [markdown]
# ## Claims checked on these numbers
# - Task-neuron sets are more stable than chance: at the largest sample count, every task's
#   half-vs-half IoU exceeds the random-set IoU $k/(2-k)$.
# - Plain top-k sets overlap heavily across tasks (many generally important neurons), while
#   specific sets overlap much less: mean off-diagonal IoU, plain vs specific.

# %%
largest = stability[stability.chunks_per_half == stability.chunks_per_half.max()]
stable = largest.groupby("selection").iou.min()
off_diag = {sel: experiments.mean_off_diagonal(m) for sel, m in ious.items()}
claims = [
    {"claim": "every task's set is more stable than chance (min half-vs-half IoU > k/(2-k))",
     **{f"min_iou_{sel}": float(v) for sel, v in stable.items()}, "chance": K / (2 - K),
     "holds": bool((stable > K / (2 - K)).all())},
    {"claim": "specific sets overlap less across tasks than plain sets (mean off-diagonal IoU)",
     **{f"mean_offdiag_iou_{sel.split()[0]}": v for sel, v in off_diag.items()},
     "holds": off_diag[f"specific top-{K:.0%}"] < off_diag[f"plain top-{K:.0%}"]},
]
for c in claims:
    print(c)
assert all(0 <= v <= 1 for v in off_diag.values())

# %%
save_results(f"01_detect_task_neurons_{profile.name}", {
    "k": K, "tasks": tasks,
    "depth": {sel: d.to_dict(orient="records") for sel, d in depth.items()},
    "iou": {sel: m.round(4).to_dict() for sel, m in ious.items()},
    "stability": stability.to_dict(orient="records"), "claims": claims,
}, model=model, profile=profile, seeds=[0], wall_s=time.perf_counter() - started)

# %% [markdown]
# ## What we found
# Printed from the numbers above, so that it always matches the run:

# %%
for sel, d in depth.items():
    share = d.groupby("task").apply(lambda g: (g.share_of_set * g.depth).sum(), include_groups=False)
    print(f"{sel}: mean depth of the set (0 = first layer, 1 = last) per task: "
          + "; ".join(f"{t} {v:.2f}" for t, v in share.items()))
for c in claims:
    print(("HOLDS: " if c["holds"] else "DOES NOT HOLD: ") + c["claim"])
print(f"wall time: {time.perf_counter() - started:.0f} s")
