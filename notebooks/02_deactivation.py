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
# # 02 — Deactivating task neurons (Paper A, Table 1)
#
# If a task's neurons (notebook 01) carry the task, switching them off should hurt that task much
# more than switching off the same number of random neurons, and more than switching off *another*
# task's neurons. Paper A reports exactly this: large drops with task neurons off, small drops with
# random neurons off.
#
# **Deactivation.** A neuron is switched off by zeroing its output $\omega^l_j$ at every position:
# either with a forward hook on `blocks.{l}.mlp.hook_post` (*activation* mode) or by zeroing its
# parameters (*parameter* mode: the row $j$ of the down projection, and with `+inputs` also column
# $j$ of the gate and up projections). For a gated SiLU MLP all three give the same output
# ($\mathrm{SiLU}(0) \cdot 0 = 0$), which the table checks numerically. The model is restored bit-exactly
# afterwards.
#
# **Controls.** *Random*: a set with the same number of neurons in every layer as the task's set,
# drawn uniformly by seed (several seeds). *Other task*: another task's set (the specificity matrix).
#
# **Metrics.** Teacher-forced, on the same test examples in every condition: classification accuracy,
# batch-calibrated accuracy and the gold label's log-probability; generation token accuracy and the
# reference answer's log-probability. The log-probability is far more sensitive than accuracy on a
# small model. *Drop* = intact − deactivated (positive = deactivation hurts).

# %% tags=["parameters"]
MODEL = "smollm2-135m-instruct"
PROFILE = None  # None: $NRN_PROFILE, else "full" on a GPU and "standard" on a CPU; "smoke" for a quick look
K = 0.10  # Table 1 fraction (Paper A: 10%)
FACTOR = 3.0  # the claim: task neurons off hurts at least FACTOR x more than random neurons off

# %%
import time

from nrnlib import experiments, plots
from nrnlib.models import load_model
from nrnlib.profiles import get_profile
from nrnlib.store import save_results

profile = get_profile(PROFILE)
tasks = profile.task_names()
n = profile.n_eval_conditions
print(f"profile: {profile.name}: {len(tasks)} tasks, {n} test examples per condition, random seeds "
      f"{profile.seeds}, k grid {profile.k_grid}")
started = time.perf_counter()
model = load_model(MODEL)

# %% [markdown]
# ## Task-neuron sets (from notebook 01's cached relevance scores)

# %%
scores = experiments.relevance_scores(experiments.relevance_chunks(model, profile, tasks))
sets_by_k = {k: {sel: experiments.neuron_sets(scores, k, sel, model=model) for sel in ("plain", "specific")}
             for k in profile.k_grid}
sets = sets_by_k[K]

# %% [markdown]
# ## Table 1: own neurons vs matched random neurons, k = 10%

# %%
table = experiments.deactivation_table(model, sets, n, random_seeds=profile.seeds, batch_size=profile.batch_size,
                                       k=K)
table.pivot_table(index=["category", "task"], columns=["selection", "condition", "mode"], values="logprob",
                  aggfunc="mean", sort=False).round(3)

# %% [markdown]
# The deactivation modes agree: the largest difference in log-prob between activation and parameter
# zeroing over all tasks and selections.

# %%
own = table[table.condition == "task"].pivot_table(index=["task", "selection"], columns="mode", values="logprob")
mode_gap = float((own.sub(own["activation"], axis=0)).abs().max().max())
print(f"max |log-prob(parameter mode) - log-prob(activation mode)| = {mode_gap:.2e}")
own.round(4)

# %%
claims = experiments.claims_table(table, FACTOR)
claims.round(3)

# %%
fig = plots.drop_bars_figure(claims, "logprob", f"Log-prob drop with task neurons vs matched random neurons off "
                             f"(k = {K:.0%}, {profile.name})")
plots.save_figure(fig, "02_table1_logprob", width=1200, height=500, profile=profile.name)
fig

# %%
fig = plots.drop_bars_figure(claims, "accuracy", f"Accuracy drop with task neurons vs matched random neurons off "
                             f"(k = {K:.0%}, {profile.name})")
plots.save_figure(fig, "02_table1_accuracy", width=1200, height=500, profile=profile.name)
fig

# %% [markdown]
# ## Specificity matrix: whose neurons are off (rows) × which task is scored (columns)
# Each column is divided by its largest drop so that tasks with different log-prob scales can be
# compared: a task-specific set gives a dark diagonal.

# %%
matrix = {sel: experiments.specificity_matrix(model, sets[sel], n, sel, profile.batch_size)
          for sel in ("plain", "specific")}
drops = {sel: m.pivot(index="whose", columns="task", values="logprob_drop").loc[tasks, tasks]
         for sel, m in matrix.items()}
normalized = {f"{sel}: drop / column max": d / d.abs().max() for sel, d in drops.items()}
fig = plots.heatmaps_figure(normalized, f"Log-prob drop, rows = whose neurons are off ({profile.name})",
                            "relative drop", zmin=-1, zmax=1, colorscale="RdBu_r", zmid=0)
plots.save_figure(fig, "02_specificity_matrix", width=1300, height=600, profile=profile.name)
fig

# %%
diagonal = {sel: experiments.diagonal_dominance(d) for sel, d in drops.items()}
for sel, dom in diagonal.items():
    print(f"{sel}: own set hurts its task the most in {dom.own_is_max.sum()} of {len(dom)} tasks")
diagonal["specific"].round(3)

# %% [markdown]
# ## Curves over k

# %%
curve = experiments.k_curve_table(model, sets_by_k, n, batch_size=profile.batch_size)
curve["set"] = curve.selection + " / " + curve.condition
fig = plots.lines_figure(curve, "k", "logprob_drop", "set", f"Log-prob drop vs fraction of neurons off "
                         f"({profile.name})", facet_col="task", facet_col_wrap=6, log_x=True,
                         labels={"logprob_drop": "log-prob drop", "k": "k"})
plots.save_figure(fig, "02_k_curves", width=1400, height=650, profile=profile.name)
fig

# %% [markdown]
# ## Claims checked on these numbers
# Per task and selection: does deactivating the task's neurons hurt at least 3× more than matched random
# neurons (by log-prob, and by accuracy)? And is the task's own set the most harmful set for it?

# %%
summary = claims.groupby("selection")[["logprob_holds", "accuracy_holds"]].sum()
summary["of"] = claims.groupby("selection").size()
print(summary)
checks = [{"claim": f"task neurons off hurts >= {FACTOR:g}x more than random neurons off ({sel}, {metric})",
           "holds_on": int(summary.loc[sel, f"{metric}_holds"]), "of": int(summary.loc[sel, "of"])}
          for sel in summary.index for metric in ("logprob", "accuracy")]
checks += [{"claim": f"own set is the most harmful set for its task ({sel})",
            "holds_on": int(d.own_is_max.sum()), "of": len(d)} for sel, d in diagonal.items()]
assert mode_gap < 1e-3, "activation and parameter zeroing should agree"
save_results(f"02_deactivation_{profile.name}", {
    "k": K, "factor": FACTOR, "n_eval": n, "table": table.to_dict(orient="records"),
    "claims_per_task": claims.to_dict(orient="records"), "checks": checks, "mode_gap": mode_gap,
    "specificity_matrix": {sel: m.to_dict(orient="records") for sel, m in matrix.items()},
    "k_curve": curve.to_dict(orient="records"),
}, model=model, profile=profile, seeds=list(profile.seeds), wall_s=time.perf_counter() - started)

# %% [markdown]
# ## What we found
# Printed from the numbers above, so that it always matches the run:

# %%
for c in checks:
    print(f"{c['claim']}: holds on {c['holds_on']} of {c['of']} tasks")
for sel in ("plain", "specific"):
    part = claims[claims.selection == sel]
    print(f"{sel}: " + "; ".join(f"{r.task} {r.logprob_drop_task:+.2f} vs random {r.logprob_drop_random:+.2f}"
                                 for r in part.itertuples()))
print(f"wall time: {time.perf_counter() - started:.0f} s")
