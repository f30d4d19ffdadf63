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
# # 06 — Neuron-level continual fine-tuning against forgetting (Paper A, Table 3)
#
# **Objectives.** After this notebook you can (1) run a task sequence and read its performance matrix
# $R$ (row $n+1$: every task's score after training task $n$; row 0: before any training), (2) compute
# average performance, backward and forward transfer from it, and (3) judge Paper A's claim that
# training only the current task's neurons (NCFT) forgets less, against its cost on the task being
# learned.
#
# **Metrics** (`nrnlib.continual`), on the test log-prob of each task: $\mathrm{AP} = \operatorname{mean}_j
# R[T, j]$; $\mathrm{BWT} = \frac{1}{T-1}\sum_{j<T-1} (R[T, j] - R[j+1, j])$ (negative = forgetting);
# $\mathrm{FWT} = \frac{1}{T-1}\sum_{j \ge 1} (R[j, j] - R[0, j])$.
#
# **Methods** (same tasks, order, protocol and budget per stage; `experiments.ncft`): *seqft* (every
# parameter), *ncft* (only the current task's top-10% neurons, detected on the model as it stands
# before the stage: the paper's reading), *ncft_original* (neurons detected once on the original
# model), *random* (as many random neurons over all layers), *w_ncft* (0/1-weighted NCFT: the
# current task's neurons minus every neuron trained at an earlier stage). Two orders: the task list and
# its reverse.
#
# **Rules** (`experiments.ncft_claims`): paired by (order, seed), $\mathrm{BWT}(m) - \mathrm{BWT}(\text{seqft})
# > 0$ with a bootstrap CI over the pairs; and the cost, the mean over stages of $R[n+1, n]$ of $m$
# minus seqft's ($> 0$: $m$ learns the current task as well).

# %% tags=["parameters"]
MODEL = "smollm2-135m-instruct"
PROFILE = None  # None: $NRN_PROFILE, else "full" on a GPU and "standard" on a CPU; "smoke" for a quick look
K = 0.10  # fraction of neurons in a task's set (Paper A: 10%)
LR = {"neurons": 1e-3, "all": 3e-5}  # one lr per arm type, the values notebook 03 tries first

# %%
import time

import pandas as pd

from nrnlib import experiments, plots
from nrnlib.claims import claims_table, describe
from nrnlib.models import load_model
from nrnlib.profiles import get_profile
from nrnlib.protocol import Protocol
from nrnlib.selection import select_neurons
from nrnlib.store import save_results

profile = get_profile(PROFILE)
protocol = Protocol.from_profile(profile)
orders = [tuple(profile.ncft_tasks), tuple(reversed(profile.ncft_tasks))]
print(f"profile {profile.name}: orders {orders}; methods {list(profile.ncft_methods)}; seeds {list(profile.seeds)}; "
      f"{profile.n_ncft_eval} test examples per task; lr {LR}")
started = time.perf_counter()
model = load_model(MODEL)

# %% [markdown]
# ## 1. How a stage picks its neurons
# NCFT detects the current task's neurons on the model as it stands: the relevance of notebook 01
# (cached per model state), top-10% globally.

# %%


def selector(current_model, task):
    chunks = experiments.relevance_chunks(current_model, profile, [task.name])
    return select_neurons(experiments.relevance_scores(chunks)[task.name], k=K, name=task.name, model=current_model)


select_settings = {"k": K, "n_attribution": profile.n_attribution, "aggregation": "signed_sum", "scope": "global"}

# %% [markdown]
# ## 2. The sequences
# Each (method, order, seed) is one sequence; each stage is cached, and an interrupted sequence resumes
# at its next stage from a checkpoint.

# %%
sequences = [experiments.run_sequence(model, order, method, protocol, lr=LR["all" if method == "seqft" else "neurons"],
                                      seed=seed, selector=selector, select_settings=select_settings,
                                      n_test=profile.n_ncft_eval)
             for seed in profile.seeds for order in orders for method in profile.ncft_methods]
table = pd.DataFrame([{"method": s["method"], "order": " > ".join(s["order"]), "seed": s["seed"],
                       **experiments.sequence_metrics(s)} for s in sequences])
table.groupby("method", sort=False)[["AP", "BWT", "FWT", "forgetting"]].agg(["mean", "std"]).round(3)

# %% [markdown]
# **BWT by hand**, from the first sequence's matrix, against `nrnlib.continual`:

# %%
r = experiments.performance_matrix(sequences[0])
T = r.shape[1]
bwt_by_hand = sum(r[T, j] - r[j + 1, j] for j in range(T - 1)) / (T - 1)
print(f"{sequences[0]['method']}, order {' > '.join(sequences[0]['order'])}: BWT by hand {bwt_by_hand:.6f}, "
      f"library {experiments.sequence_metrics(sequences[0])['BWT']:.6f}")
assert abs(bwt_by_hand - experiments.sequence_metrics(sequences[0])["BWT"]) < 1e-9

# %% [markdown]
# ## 3. Table 3 as a figure
# What to look at: BWT (forgetting, closer to 0 is better) against the current-task cost, per method.

# %%
long = table.melt(id_vars=["method", "order", "seed"], value_vars=["AP", "BWT", "FWT"], var_name="metric")
fig = plots.lines_figure(long, "method", "value", "order", f"AP, BWT and FWT per method and order ({profile.name}; "
                         "log-prob; one point per seed)", facet_col="metric",
                         labels={"value": "nats", "method": ""})
fig.update_traces(mode="markers")
plots.save_figure(fig, "06_table3", width=1200, height=450, profile=profile.name)
fig

# %% [markdown]
# ## 4. The performance matrices of seqft and NCFT
# Rows: after stage n (row 0: before training); columns: tasks in the order trained. Forgetting shows as
# a column that darkens below its diagonal.

# %%
first_order = " > ".join(orders[0])
matrices = {f"{s['method']}": pd.DataFrame(experiments.performance_matrix(s), columns=list(s["order"]),
                                           index=["before"] + [f"after {t}" for t in s["order"]])
            for s in sequences if s["seed"] == profile.seeds[0] and tuple(s["order"]) == orders[0]
            and s["method"] in ("seqft", "ncft")}
fig = plots.heatmaps_figure(matrices, f"Test log-prob R[stage, task], order {first_order} ({profile.name})",
                            "log-prob")
plots.save_figure(fig, "06_performance_matrices", width=1100, height=450, profile=profile.name)
fig

# %% [markdown]
# ## 5. The verdicts

# %%
claims = experiments.ncft_claims(sequences, profile)
claims_table(claims)

# %%
save_results(f"06_ncft_continual_{profile.name}", {
    "k": K, "lr": LR, "orders": [list(o) for o in orders], "methods": list(profile.ncft_methods),
    "protocol": protocol.run_settings(), "metrics": table.to_dict(orient="records"),
    "matrices": {f"{s['method']}|{'>'.join(s['order'])}|{s['seed']}": experiments.performance_matrix(s).tolist()
                 for s in sequences},
}, claims=claims, model=model, profile=profile, seeds=list(profile.seeds), wall_s=time.perf_counter() - started)

# %% [markdown]
# ## What we found
# Printed from the numbers above, so it always matches the run.

# %%
for c in claims:
    print(describe(c))
print(f"\nwall time of this run: {time.perf_counter() - started:.0f} s (stages in the cache cost ~0 s)")

# %% [markdown]
# ## Exercises
# 1. Give W-NCFT graded weights: scale each neuron's update by its normalised relevance for the current
#    task. Does it forget less than the 0/1 version?
# 2. Add experience replay to seqft (a few earlier examples mixed into each stage): how close does it
#    come to NCFT's BWT, and at what cost in current-task score?
