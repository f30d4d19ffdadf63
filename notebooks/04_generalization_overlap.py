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
# # 04 — Specialization and generalization as more task neurons are trained (Paper A, Figure 2)
#
# **Objectives.** After this notebook you can (1) build the trained set of a multi-task run as the
# union of its tasks' top-$p$ neurons and measure how much a held-out task's neurons overlap it,
# (2) run a proportion sweep on the training protocol and read in-domain (ID) and out-of-domain (OOD)
# gains with their CIs, and (3) say which of Paper A's four Figure 2 observations survive on our model.
#
# **Paper A's setup.** Per category (classification, generation), three training tasks $x$ are
# trained *jointly*, updating only $N_x(p) = \bigcup_i N_{x_i}(p)$, where $N_t(p)$ is task $t$'s top
# $p$ of neurons by relevance (notebook 01; $p = 100\%$ is every MLP neuron). ID = the training
# tasks' test sets; OOD = the category's held-out tasks, and the other category's tasks. Overlap of a
# test task $y$: $\mathrm{IoU}(N_x, N_y) = |N_x \cap N_y| / |N_x \cup N_y|$.
#
# **Paper A's observations.** (1) ID first rises then falls with $p$ (peaks at 70% classification,
# 50% generation): interference between jointly trained tasks; (2) trained one task at a time, ID
# rises steadily; (3) OOD within a category rises with $p$, as the overlap does; (4) no transfer from
# classification to generation.
#
# **Our rules** (`experiments.generalization_claims`, fixed before the run): every comparison is a
# paired difference of per-example log-prob *gains* over the untrained model (same test examples,
# same seeds), with a bootstrap 95% CI resampling seeds and examples; see each claim's statistic.

# %% tags=["parameters"]
MODEL = "smollm2-135m-instruct"
PROFILE = None  # None: $NRN_PROFILE, else "full" on a GPU and "standard" on a CPU; "smoke" for a quick look

# %%
import time

import torch

from nrnlib import experiments, plots
from nrnlib.claims import claims_table, describe
from nrnlib.models import load_model
from nrnlib.profiles import get_profile
from nrnlib.store import save_results
from nrnlib.tasks import get_task

profile = get_profile(PROFILE)
protocol = experiments.sweep_protocol(profile)
tasks = profile.generalization_task_names()
joint_seeds, individual_seeds = profile.sweep_seeds()
categories = {cat: [t for t in tasks if get_task(t).role == "train" and get_task(t).category == cat]
              for cat in ("classification", "generation")}
categories = {cat: train for cat, train in categories.items() if train}
n_test = min(profile.n_generalization_eval, *(len(get_task(t).test) for t in tasks))
print(f"profile {profile.name}: training tasks {categories}; test tasks {tasks}; proportions "
      f"{list(profile.proportions)} (joint), {list(profile.individual_proportions)} (individual); seeds "
      f"{list(joint_seeds)} (joint), {list(individual_seeds)} (individual); {n_test} test examples per task; runs of "
      f"at most {protocol.max_steps} steps, {protocol.dev_size} dev examples per task, one task per step")
started = time.perf_counter()
model = load_model(MODEL)

# %% [markdown]
# ## 1. Relevance, top-$p$ sets and the overlap
# Relevance as in notebook 01 (cached per chunk). What to look at in the overlap figure: a held-out
# task's IoU with the training union at each $p$. Two random sets of fractions $a$ and $b$ overlap by
# about $ab/(a+b-ab)$, so IoU rises with $p$ whatever the tasks are; the question is whether it
# rises *more* for tasks that then gain more.

# %%
scores = experiments.relevance_scores(experiments.relevance_chunks(model, profile, tasks))
overlap = experiments.overlap_table(scores, profile.proportions, categories, tasks)
fig = plots.lines_figure(overlap[overlap.relation != "ID"], "p", "overlap", "test_task",
                         f"Overlap IoU(N_x, N_y) of each test task with the training union ({profile.name})",
                         facet_col="category", log_x=True,
                         labels={"p": "proportion of task neurons", "overlap": "IoU with the training union"})
plots.save_figure(fig, "04_overlap", width=1100, height=450, profile=profile.name)
fig

# %% [markdown]
# **Reading (the committed `standard` run).** At p = 1% a held-out task's set already shares 18–37% of
# the training union (IoU), far above two random sets of 1% and 3% (IoU ab/(a+b−ab) ≈ 0.8%): task
# sets overlap heavily at the top of the ranking. IoU then rises with p for every task, to 1 at 100%.
# The classification union overlaps its own held-out tasks more (0.30–0.37 at 1%) than the generation
# tasks (0.19–0.29); for the generation union the two groups are mixed (0.22–0.31).

# %% [markdown]
# ## 2. The union, by hand
# $N_x$ is a plain set union of the training tasks' top-$p$ masks; we rebuild it with torch and
# compare with `training_union` at the reference proportion.

# %%
p0 = 0.10
masks = []
for cat, train in categories.items():
    for t in train:
        flat = scores[t].flatten()
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[torch.argsort(flat, descending=True, stable=True)[: round(p0 * flat.numel())]] = True
        masks.append((cat, mask.view_as(scores[t])))
for cat, train in categories.items():
    by_hand = torch.stack([m for c, m in masks if c == cat]).any(0)
    library = experiments.training_union(experiments.proportion_sets(scores, p0), train).mask
    print(f"{cat}: |N_x({p0:.0%})| = {int(by_hand.sum()):,} by hand, {int(library.sum()):,} in the library")
    assert torch.equal(by_hand, library)

# %% [markdown]
# ## 3. The sweep
# Joint training per category at every proportion, and each training task alone at a few. Every
# (mode, category or task, $p$, seed) is one cached run on the protocol: an interrupted sweep resumes
# at the next run. One learning rate for the whole sweep, chosen on dev at $p$ = 10%. A joint run's
# step trains on one task, the three in turn (`Protocol.task_batches`): the rows of a step then share
# their task's prompt prefix, which runs once. Each task still gets a third of the steps; what changes
# from a mixed batch is that the tasks' gradients alternate from step to step instead of being summed.

# %%
sweep = experiments.proportion_sweep(model, scores, protocol, categories, tasks, proportions=profile.proportions,
                                     seeds=joint_seeds, individual_proportions=profile.individual_proportions,
                                     individual_seeds=individual_seeds, n_test=n_test)
rows = sweep.rows
print(f"lr {sweep.lr['lr']:g} chosen at p = {sweep.lr['reference_p']:g} "
      f"({', '.join(f'{lr:g}: {s:.3f}' for lr, s in sweep.lr['scores'].items())} mean best dev loss)")
experiments.curve_summary(rows).round(3)

# %% [markdown]
# ## 4. ID and OOD against the proportion
# What the paper predicts: ID (joint) peaks below 100%; "ID, trained alone" keeps rising; OOD (same
# category) rises; OOD (other category) stays near 0 after classification training.

# %%
curves = experiments.curve_cis(rows)
fig = plots.gain_curves_figure(curves, f"Log-prob gain over the untrained model against the proportion trained "
                                       f"({profile.name}; 95% CI over seeds and examples)")
plots.save_figure(fig, "04_proportion_sweep", width=1200, height=500, profile=profile.name)
fig

# %% [markdown]
# **Reading (the committed `standard` run: 3 seeds jointly, 1 alone).** Classification ID is flat: +2.37
# to +2.59 nats at every p jointly; alone it even falls a little, +2.95 at 10% to +2.42 at 100%. Generation ID
# is highest at the smallest p and falls: +7.33 at 1% and +7.40 at 5% to +1.54 at 100% jointly, +6.50 at 10%
# to +3.21 at 100% alone. So no curve rises then falls, and training alone does not rise either. OOD within
# a category also falls as p grows (classification +2.38 at 1% to −0.89 at 100%; generation +5.25 to
# −4.31), on every held-out task but headline_topic (flat at about +1.5). Joint classification training
# *harms* generation more and more: +0.8 [−0.4, +2.1] nats at 1%, −7.8 at 5%, −28.5 at 30%, −42.2 at
# 100%; generation training costs the classification tasks about 2 nats from 5% on. On this model,
# training more neurons mostly moves more of what the other tasks rely on.

# %% [markdown]
# ## 5. Does overlap track OOD gain?
# Each point is one held-out task of the trained category at one proportion.

# %%
points = (rows[(rows["mode"] == "joint") & (rows.relation == "OOD (same category)")]
          .groupby(["category", "p", "test_task"], as_index=False)
          .agg(overlap=("overlap", "mean"), gain=("logprob_gain", "mean")))
fig = plots.lines_figure(points.sort_values("overlap"), "overlap", "gain", "test_task",
                         f"OOD log-prob gain against overlap ({profile.name})", facet_col="category",
                         labels={"overlap": "IoU(N_x, N_y)", "gain": "OOD log-prob gain (nats)"})
plots.save_figure(fig, "04_overlap_vs_ood", width=1100, height=450, profile=profile.name)
fig

# %% [markdown]
# **Reading (the committed `standard` run).** Higher overlap goes with *lower* OOD gain (Spearman ρ
# −0.41 [−0.64, −0.12] over 42 points, means over 3 seeds): both are driven by p, overlap rising and the
# OOD gain falling. Paper A's "overlap tracks OOD" does not reproduce; a size-matched random-set control
# (exercise 2) would separate overlap from size.

# %% [markdown]
# ## 6. Did the runs converge?
# What to look at: each run's dev loss at every evaluation (one panel per joint category or task
# trained alone, one colour per proportion, one dash per seed). A run stops when its dev loss has not
# improved for `patience` evaluations, and its best evaluation's weights are the ones scored; a run
# still falling at the step cap has not converged.

# %%
dev = experiments.dev_curves(sweep.runs, lr=sweep.lr["lr"])
fig = plots.lines_figure(dev, "step", "dev_loss", "p", f"Dev loss of the sweep's runs at lr "
                         f"{sweep.lr['lr']:g} ({profile.name})", facet_col="panel", line_dash="seed",
                         facet_col_wrap=4, labels={"dev_loss": "dev answer loss (nats)", "step": "step"},
                         category_orders={"p": dev.sort_values("p_value").p.unique()})
plots.save_figure(fig, "04_loss_curves", width=1300, height=700, profile=profile.name)
runs = rows.drop_duplicates(["mode", "trained", "p", "seed"])
print(f"{len(runs)} runs: stopped {runs.stopped.value_counts().to_dict()}; {int((runs.best_step == 0).sum())} never "
      "improved on their dev loss (their weights are the untrained model's, their gains 0: at this lr, training "
      "that many neurons only hurt)")
fig

# %% [markdown]
# **Reading (the committed `standard` run).** All 60 runs stopped early on dev, none at the 150-step
# cap, and every one improved on its untrained dev loss first (best evaluation at step 10 to 110, median
# 50). The curves fall fast in the first 10-20 steps and then flatten or turn up: what stops a run is
# dev loss rising, not a budget. Two things to notice: trivia_qa trained alone is best at step 10 at every
# p and then gets worse, and one joint classification run at 100% (seed 2) jumps to 6.2 nats at step 90,
# after its best evaluation (step 70), whose weights are the ones scored.

# %% [markdown]
# ## 7. The verdicts

# %%
claims = experiments.generalization_claims(rows, profile)
claims_table(claims)

# %%
save_results(f"04_generalization_overlap_{profile.name}", {
    "categories": categories, "tasks": tasks, "proportions": list(profile.proportions),
    "individual_proportions": list(profile.individual_proportions), "n_test": n_test, "lr": sweep.lr,
    "protocol": protocol.run_settings(), "overlap": overlap.to_dict(orient="records"),
    "rows": rows.drop(columns="per_example_gain").to_dict(orient="records"),
    "curves": curves.to_dict(orient="records"),
}, claims=claims, model=model, profile=profile, seeds=sorted(set(joint_seeds) | set(individual_seeds)),
    wall_s=time.perf_counter() - started)

# %% [markdown]
# ## What we found
# Printed from the numbers above, so it always matches the run.

# %%
for c in claims:
    if not c.id.endswith("per_task"):
        print(describe(c))
print(f"\ntraining time summed over the sweep's runs: {sum(r['curve']['wall_s'] for r in sweep.runs):.0f} s; "
      f"wall time of this run: {time.perf_counter() - started:.0f} s (runs in the cache cost ~0 s)")

# %% [markdown]
# ## Exercises
# 1. Replace the union $N_x$ by the intersection of the training tasks' sets: does training only the
#    shared neurons transfer better or worse to held-out tasks?
# 2. Control the overlap: train a random set of the same size as $N_x(p)$ (`random_like(seed,
#    match="total")`) and compare OOD gains: how much of the rise is the overlap, how much the size?
# 3. Which held-out task gains most at small $p$, and is it the one with the largest overlap?
