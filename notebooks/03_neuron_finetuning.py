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
# # 03 — Fine-tuning only the task neurons (Paper A, Table 2)
#
# The second proof in Paper A: if a task lives in its task neurons, training *only those neurons*
# should improve the task more than training the same number of random neurons, and come close to
# training all parameters.
#
# **Arms**, all with the same loop, data order (seeded), number of steps, batch size and learning rate:
# - *none*: the model as it is;
# - *task*: only the parameters of the task's top-10% neurons (notebook 01), for each of the two
#   selections: *plain* (the paper's global top-k by relevance) and *specific* (top-k by the z-score of
#   the task's relevance against the other tasks'). For neuron $j$ of layer $l$: column $j$ of the
#   gate and up projections and row $j$ of the down projection. Masked training through parameter
#   gradient hooks: every other entry of the model stays bit-identical (tested), also under AdamW
#   with weight decay;
# - *random*: per selection, the same number of neurons in every layer as the task's set, drawn by seed;
# - *all*: every parameter.
#
# Runs go seed by seed (all tasks and arms with seed 0, then seed 1, ...), each cached on disk: an
# interrupted run resumes where it stopped.
#
# Loss: mean cross-entropy over the answer tokens. Metric: the task's test split, teacher-forced:
# accuracy and the gold label's log-probability (classification), token accuracy and the reference
# answer's log-probability (generation). Every arm is trained with each seed of the profile.

# %% tags=["parameters"]
MODEL = "smollm2-135m-instruct"
PROFILE = None  # None: $NRN_PROFILE, else "full" on a GPU and "standard" on a CPU; "smoke" for a quick look
K = 0.10  # fraction of neurons in a task's set (Paper A: 10%)
LR = 1e-4  # one learning rate for every arm (AdamW)

# %%
import time

from nrnlib import experiments, plots
from nrnlib.models import load_model
from nrnlib.profiles import get_profile
from nrnlib.store import save_results
from nrnlib.tasks import get_task

profile = get_profile(PROFILE)
tasks = profile.task_names()
train_tasks = [t for t in tasks if get_task(t).role == "train"]
print(f"profile: {profile.name}: training tasks {train_tasks}; {profile.finetune_steps} steps x "
      f"{profile.finetune_batch_size} examples, lr {LR:g}, seeds {profile.seeds}; "
      f"{profile.n_eval_conditions} test examples per score")
started = time.perf_counter()
model = load_model(MODEL)

# %% [markdown]
# ## Task-neuron sets (top-10%, plain and specific, from notebook 01's cached relevance scores)
# The sets are selected among all the profile's tasks, as in notebook 01.

# %%
scores = experiments.relevance_scores(experiments.relevance_chunks(model, profile, tasks))
sets = {sel: {t: s for t, s in experiments.neuron_sets(scores, K, sel, model=model).items() if t in train_tasks}
        for sel in ("plain", "specific")}
for t in train_tasks:
    print(t, {sel: sets[sel][t].count for sel in sets}, "neurons")

# %% [markdown]
# ## Table 2

# %%
table = experiments.neuron_finetuning_table(model, sets, profile, lr=LR)
claims = experiments.finetuning_claims(table)
claims.set_index(["task", "selection"]).round(3)

# %%
fig = plots.arm_bars_figure(table, ["logprob", "accuracy"], f"Test log-prob and accuracy (token accuracy for "
                            f"generation) after fine-tuning each arm ({profile.name}; mean and std over seeds)")
plots.save_figure(fig, "03_table2", width=1100, height=800, profile=profile.name)
fig

# %% [markdown]
# Training losses: first step and the mean of the last five steps, per arm (same batches in every arm).

# %%
table.groupby(["task", "label"], sort=False)[["trainable_entries", "first_loss", "mean_loss_last_5",
                                             "train_wall_s"]].mean().round(3)

# %% [markdown]
# ## Claims checked on these numbers

# %%
checks = [{"claim": f"task-neuron fine-tuning beats random-neuron fine-tuning ({metric}, mean over seeds)",
           "selection": sel, "holds_on": int(part[f"{metric}_task_beats_random"].sum()), "of": len(part),
           "tasks_where_it_holds": part.task[part[f"{metric}_task_beats_random"]].tolist()}
          for sel, part in claims.groupby("selection", sort=False) for metric in ("logprob", "accuracy")]
for c in checks:
    print(f"[{c['selection']}] {c['claim']}: holds on {c['holds_on']} of {c['of']} tasks {c['tasks_where_it_holds']}")
assert (table.groupby(["task", "label"]).size() == table.groupby(["task", "label"]).seed.nunique()).all()
save_results(f"03_neuron_finetuning_{profile.name}", {
    "k": K, "lr": LR, "steps": profile.finetune_steps, "batch_size": profile.finetune_batch_size,
    "table": table.to_dict(orient="records"), "claims_per_task": claims.to_dict(orient="records"), "checks": checks,
}, model=model, profile=profile, seeds=list(profile.seeds), wall_s=time.perf_counter() - started)

# %% [markdown]
# ## What we found
# Printed from the numbers above, so that it always matches the run. Both arms of a seed see the same
# batches, so the task-minus-random difference is also given paired by seed, with the number of seeds on
# which the task arm comes out higher: a mean that one seed carries is not a result.

# %%
for r in claims.itertuples():
    parts = [f"{arm} {getattr(r, 'logprob_' + arm):.2f}" for arm in ("none", "task", "random", "all")
             if hasattr(r, "logprob_" + arm)]
    print(f"{r.task} [{r.selection}] (log-prob): " + ", ".join(parts)
          + f"; task - random, paired by seed: {r.logprob_task_minus_random:+.2f} "
          f"(task higher on {r.logprob_task_wins_seeds} of {r.n_paired_seeds} seeds)")
print(f"wall time of this run: {time.perf_counter() - started:.0f} s (arms already in the cache cost ~0 s); "
      f"training time summed over all {len(table)} arms as they were computed: {table.train_wall_s.sum():.0f} s")
