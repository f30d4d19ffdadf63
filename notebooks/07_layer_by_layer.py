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
# # 07 — Layer by layer: where does multi-task learning happen? (Paper B)
#
# Paper B (Zhao, Ziser & Cohen) compares two *experimental* models with *control* models, each
# fine-tuned on one task alone, layer by layer: if the multi-task model represents a task the way its
# single-task control does at some layer, that layer holds task knowledge. On Llama-2-7B they find
# three ranges: layers 1–9 *shared* (general representations), 10–15 *transition* (the multi-task
# model is close to every control), 16–32 *refinement* (task-specific); for tasks the multi-task
# model never saw, the transition layers disappear.
#
# **Here.** Control $C_t$: SmolLM2 fully fine-tuned on task $t$ alone (AdamW; the profile's steps).
# Experimental $E$: SmolLM2 fully fine-tuned on the mixture of the six training tasks (six times the
# steps, so each task is seen about as often as by its control). Experimental *base*: SmolLM2 before
# this fine-tuning (already instruction-tuned, unlike Paper B's pre-trained model: we measure what
# *our* multi-task fine-tuning adds). Held-out tasks have controls too, but $E$ never saw them.
#
# **Similarity.** Residual stream at the last prompt token after every block, over the task's test
# prompts; linear CKA with the biased estimator in feature space, float64 (Paper B's choice):
# $\mathrm{CKA}(X, Y) = \lVert Y^\top X\rVert_F^2 / (\lVert X^\top X\rVert_F \lVert Y^\top Y\rVert_F)$ on
# column-centred $X, Y$; the debiased estimator is shown beside it (the biased one is inflated when
# examples are few relative to the 576 dimensions).
#
# **Ranges** (`experiments.layer_ranges`), from the mean curves $b(l)$ = CKA(base, $C_t$) and
# $e(l)$ = CKA($E$, $C_t$) over tasks: *shared* = the first blocks with $b(l) \ge \tau$; *transition* =
# the following blocks with $e(l) \ge \tau$; *refinement* = the rest.

# %% tags=["parameters"]
MODEL = "smollm2-135m-instruct"
PROFILE = None  # None: $NRN_PROFILE, else "full" on a GPU and "standard" on a CPU; "smoke" for a quick look
LR = 1e-4  # AdamW learning rate of every fine-tune
TAU = 0.95  # CKA threshold of the layer ranges

# %%
import time

import pandas as pd

from nrnlib import experiments, plots
from nrnlib.models import load_model
from nrnlib.profiles import get_profile
from nrnlib.store import save_results
from nrnlib.tasks import get_task

profile = get_profile(PROFILE)
tasks = profile.task_names()
train_tasks = [t for t in tasks if get_task(t).role == "train"]
print(f"profile: {profile.name}: {len(tasks)} tasks ({len(train_tasks)} trained into E), {profile.n_eval} test "
      f"prompts per task, {profile.finetune_steps} steps per control, lr {LR:g}")
started = time.perf_counter()
model = load_model(MODEL)
n_blocks = int(model.cfg.n_layers)

# %% [markdown]
# ## Hidden states of base, E and every control (each model's states cached on disk)

# %%
states = experiments.mossa_states(model, profile, tasks, train_tasks, lr=LR)
curves = experiments.cka_curves(states)

# %% [markdown]
# ## CKA with the control, per task and block

# %%
linear = curves[(curves.estimator == "linear") & (curves.layer > 0)]
fig = plots.lines_figure(linear.assign(curve=linear.model + " vs C_t"), "layer", "cka", "curve",
                         f"Linear CKA with the single-task control, per task ({profile.name})", facet_col="task",
                         facet_col_wrap=6, labels={"layer": "block", "cka": "CKA"})
plots.save_figure(fig, "07_cka_per_task", width=1400, height=650, profile=profile.name)
fig

# %% [markdown]
# ## Layer ranges, seen and unseen tasks, and task neurons on the same axis

# %%
seen, unseen = curves[curves.seen], curves[~curves.seen]
ranges = {"seen": experiments.layer_ranges(seen, TAU)}
if not unseen.empty:
    ranges["unseen"] = experiments.layer_ranges(unseen, TAU)
paper = experiments.paper_b_ranges(n_blocks)
summary = pd.DataFrame({**{f"{k} tasks": experiments.ranges_as_depth(v, n_blocks) for k, v in ranges.items()},
                        "Paper B (rescaled to this depth)": experiments.ranges_as_depth(paper, n_blocks)})
summary

# %%
mean = (curves[(curves.estimator == "linear") & (curves.layer > 0)]
        .assign(curve=lambda d: d.model + " vs C_t, " + d.seen.map({True: "seen", False: "unseen"}) + " tasks")
        .groupby(["curve", "layer"], sort=False).cka.mean().reset_index())
scores = experiments.relevance_scores(experiments.relevance_chunks(model, profile, tasks))
depth = pd.concat([experiments.depth_table(experiments.neuron_sets(scores, 0.10, sel), sel)
                   for sel in ("plain", "specific")])
neuron_depth = (depth.groupby(["selection", "layer"]).share_of_set.mean().reset_index()
                .rename(columns={"share_of_set": "share"}).assign(layer=lambda d: d.layer + 1))
fig = plots.layer_by_layer_figure(mean, ranges["seen"], neuron_depth,
                                  f"Where multi-task learning happens in SmolLM2-135M ({profile.name}; "
                                  f"shaded: ranges on seen tasks, τ = {TAU})")
plots.save_figure(fig, "07_layer_by_layer", width=1100, height=750, profile=profile.name)
fig

# %% [markdown]
# The debiased estimator, for comparison (mean over tasks).

# %%
curves[curves.layer > 0].groupby(["estimator", "model", "seen"]).cka.describe()[["mean", "min", "max"]].round(3)

# %% [markdown]
# ## Claims checked on these numbers

# %%
transition_seen = ranges["seen"]["transition"][1] - ranges["seen"]["transition"][0]
transition_unseen = (ranges["unseen"]["transition"][1] - ranges["unseen"]["transition"][0]
                     if "unseen" in ranges else None)
gap = experiments.cka_gap(curves)
closer = {g: part[part.gap > 0].layer.tolist() for g, part in gap.groupby("tasks")}
print("blocks where E is closer to the controls than base is:", closer)
checks = [
    {"claim": "seen tasks show transition layers (E matches the controls where base does not)",
     "transition_blocks": transition_seen, "holds": transition_seen > 0},
    # only testable where the seen tasks have a transition to lose
    {"claim": "the transition disappears for unseen tasks (Paper B)", "transition_blocks_unseen": transition_unseen,
     "holds": (transition_unseen is not None and transition_unseen < transition_seen) if transition_seen else None},
]
for c in checks:
    print(c)
assert linear.cka.dropna().between(0.0, 1.0 + 1e-9).all()
save_results(f"07_layer_by_layer_{profile.name}", {
    "tau": TAU, "lr": LR, "ranges": {k: {n: list(r) for n, r in v.items()} for k, v in ranges.items()},
    "ranges_depth": summary.to_dict(), "curves": curves.to_dict(orient="records"), "checks": checks,
    "gap": gap.to_dict(orient="records"), "closer_blocks": closer,
}, model=model, profile=profile, seeds=[0], wall_s=time.perf_counter() - started)

# %% [markdown]
# ## What we found
# Printed from the numbers above, so that it always matches the run:

# %%
for name, col in summary.items():
    print(f"{name}: " + "; ".join(f"{k} {v}" for k, v in col.items()))
for c in checks:
    verdict = {True: "HOLDS", False: "DOES NOT HOLD", None: "NOT TESTABLE (no transition on seen tasks)"}[c["holds"]]
    print(f"{verdict}: {c['claim']}")
print(f"wall time: {time.perf_counter() - started:.0f} s")
