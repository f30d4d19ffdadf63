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
# # 05 — Are the neurons of related tasks alike, and does it matter? (Paper A, Figure 3)
#
# **Objectives.** After this notebook you can (1) write the parameter vector of an MLP neuron and
# compare two *sets* of neurons that have no one-to-one pairing, (2) separate what the comparison
# gives for free (shared neurons, random sets of the same sizes) from what training adds, and (3)
# read a per-layer correlation with its p-value and bootstrap CI.
#
# **Paper A's claim.** Train one model $M_i$ per training task $i$, updating only its task neurons.
# Inside $M_i$, in each layer, compare the parameters of task $i$'s neurons with those of a held-out
# task $j$'s neurons: beyond a certain depth they are similar, and the similarity correlates with how
# well $M_i$ does on $j$ (classification → classification, generation → generation, classification →
# generation).
#
# **The comparison.** Neuron $n$ of layer $l$ has the parameter vector
# $\theta_n = [W_\text{gate}[n,:];\, W_\text{up}[n,:];\, W_\text{down}[:,n]]$ (1,728 numbers in SmolLM2).
# Two sets hold different neurons in different numbers, so we define two similarities of sets $A, B$
# in a layer, each on unit vectors $\hat\theta$ so a few large neurons do not decide it:
# *centroid* $\cos(\bar{\hat\theta}_A, \bar{\hat\theta}_B)$ (the cosine of the mean directions, the
# literal reading of "cosine similarity of the parameters") and *matching*
# $\tfrac12[\operatorname{mean}_{a} \max_{b} \cos(\hat\theta_a, \hat\theta_b) + \operatorname{mean}_{b}
# \max_{a} \cos(\hat\theta_a, \hat\theta_b)]$ (each neuron's nearest neighbour in the other set). Two
# sets that share neurons are similar by construction, so every curve comes with a **shuffled
# control**: random sets with the same number of neurons in every layer, in the same model.
#
# **Rules** (`experiments.similarity_claims`, fixed before the run): in each of the deeper half's
# layers, Spearman's $\rho$ between similarity and the held-out task's log-prob gain over the
# (model, held-out task) pairs, CI by resampling pairs, above 0 in at least two thirds of those layers;
# and, ours, the similarity above the shuffled control.

# %% tags=["parameters"]
MODEL = "smollm2-135m-instruct"
PROFILE = None  # None: $NRN_PROFILE, else "full" on a GPU and "standard" on a CPU; "smoke" for a quick look
K = 0.10  # fraction of neurons in a task's set (Paper A: 10%)

# %%
import time

import pandas as pd
import torch

from nrnlib import experiments, plots
from nrnlib.claims import claims_table, describe
from nrnlib.models import load_model
from nrnlib.profiles import get_profile
from nrnlib.protocol import Protocol
from nrnlib.similarity import layer_similarity
from nrnlib.store import save_results
from nrnlib.tasks import get_task

profile = get_profile(PROFILE)
protocol = Protocol.from_profile(profile, max_steps=profile.generalization_max_steps or profile.max_steps)
tasks = profile.generalization_task_names()
train_tasks = [t for t in tasks if get_task(t).role == "train"]
held_out = [t for t in tasks if t not in train_tasks]
n_test = min(profile.n_generalization_eval, *(len(get_task(t).test) for t in held_out))
print(f"profile {profile.name}: models M_i for {train_tasks}; held-out tasks {held_out}; seeds {list(profile.seeds)}; "
      f"{n_test} test examples per held-out task")
started = time.perf_counter()
model = load_model(MODEL)

# %% [markdown]
# ## 1. The sets, and one similarity by hand
# Top-10% sets from notebook 01's relevance (cached). The centroid similarity of two sets in one
# layer, written out with the bridge's MLP weights (`mlp.gate`, `mlp.in`, `mlp.out`: Hugging Face
# layout, neurons are rows of gate and in, columns of out), against `nrnlib.similarity`.

# %%
scores = experiments.relevance_scores(experiments.relevance_chunks(model, profile, tasks))
sets = experiments.proportion_sets(scores, K, model)
a, b = sets[train_tasks[0]], sets[held_out[0]]
layer = max(range(model.cfg.n_layers), key=lambda lay: min(len(a.indices(lay)), len(b.indices(lay))))
mlp = model.blocks[layer].mlp


def unit_vectors(neurons):
    theta = torch.cat([mlp.gate.weight[neurons], getattr(mlp, "in").weight[neurons], mlp.out.weight[:, neurons].T], 1)
    return theta.double() / theta.double().norm(dim=1, keepdim=True)


with torch.no_grad():
    ca, cb = unit_vectors(a.indices(layer)).mean(0), unit_vectors(b.indices(layer)).mean(0)
    by_hand = float(ca @ cb / (ca.norm() * cb.norm()))
library = float(layer_similarity(model, a, b)[layer])
print(f"layer {layer + 1}: {len(a.indices(layer))} neurons of {a.name}, {len(b.indices(layer))} of {b.name}, "
      f"{int((a & b).counts_per_layer()[layer])} shared; centroid cosine by hand "
      f"{by_hand:.6f}, library {library:.6f}")
assert abs(by_hand - library) < 1e-9

# %% [markdown]
# ## 2. Train the models $M_i$ and measure inside them
# Each $M_i$ trains on task $i$ alone, only its neurons, to convergence on its dev split (the lr is
# chosen on dev over the grid at the first seed). The measurement runs on the trained weights: the
# held-out tasks' test scores and every similarity. Each $(i, \text{seed})$ is one cached unit.

# %%
fig3 = experiments.similarity_models(model, scores, protocol, train_tasks, held_out, k=K, seeds=profile.seeds,
                                     n_test=n_test)
rows = fig3.rows
print(f"lr {fig3.lr['lr']:g} ({', '.join(f'{lr:g}: {s:.3f}' for lr, s in fig3.lr['scores'].items())} mean best "
      f"dev loss)")
by_layer = experiments.similarity_by_layer(rows)

# %% [markdown]
# ## 3. Similarity by layer
# What to look at: the trained curve against the shuffled control (how much of the similarity is the
# sets' sizes and shared neurons) and against the untrained one (how much training added). Layers are
# 1-based.

# %%
curves = by_layer.melt(id_vars=["stage", "setting", "definition", "layer"], value_vars=["similarity", "shuffled"],
                       var_name="pair", value_name="value")
curves = curves[~((curves.stage == "untrained") & (curves.pair == "shuffled"))]
curves = curves.assign(curve=curves.stage + ", " + curves.pair.map({"similarity": "task sets",
                                                                    "shuffled": "shuffled control"}),
                       layer=curves.layer + 1)
fig = plots.lines_figure(curves[curves.definition == "centroid"], "layer", "value", "curve",
                         f"Centroid similarity of task i's and held-out task j's neurons ({profile.name})",
                         facet_col="setting", labels={"value": "cosine similarity", "layer": "layer"})
plots.save_figure(fig, "05_similarity_by_layer", width=1300, height=450, profile=profile.name)
fig

# %% [markdown]
# **Reading (the committed `standard` run).** In every setting the task sets' curve lies far above the
# shuffled control (by 0.39 to 0.46 over layers 16–30): the neurons two tasks select are alike. The
# untrained curve is there but hidden under the trained one. The two differ by at most 0.001 in any layer,
# so fine-tuning 10% of the neurons does not make the sets more alike. The similarity is a property of
# the loaded model and of the neurons the two sets share (in layer 1, tweet_sentiment and headline_topic
# share 191 of their 350 and 372).

# %% [markdown]
# ## 4. Does similarity go with the held-out task's gain?
# Per layer, over the (model, held-out task) pairs: Spearman's $\rho$ (and Pearson's $r$ beside it).
# What to look at: whether $\rho$ is positive from some depth on, and whether the shuffled similarity
# correlates as well (then the correlation is about set sizes, not parameters).

# %%
corr = experiments.layer_correlations(rows)
corr_shuffled = experiments.layer_correlations(rows, column="shuffled")
both = pd.concat([corr.assign(pair="task sets"), corr_shuffled.assign(pair="shuffled control")])
both = both.assign(layer=both.layer + 1)
fig = plots.lines_figure(both, "layer", "spearman", "pair", f"Spearman's rho between similarity and the held-out "
                         f"task's log-prob gain, per layer ({profile.name})", facet_col="setting",
                         labels={"spearman": "Spearman's rho", "layer": "layer"})
plots.save_figure(fig, "05_correlation_by_layer", width=1300, height=450, profile=profile.name)
fig

# %% [markdown]
# **Reading (the committed `standard` run).** Each setting has nine (model, held-out task) pairs, so
# $\rho$ swings from layer to layer, and the shuffled control swings about as much. Over layers 16–30 the
# task sets' $\rho$ leans positive for classification → classification (mean 0.48) and generation →
# generation (0.49, positive in all 15 layers). It is weaker for classification → generation (0.25) and
# absent for generation → classification (0.03). The table below and the verdicts' CIs say how little
# nine pairs can decide.

# %%
corr[corr.layer >= model.cfg.n_layers // 2].round(3)

# %% [markdown]
# ## 5. The verdicts

# %%
claims = experiments.similarity_claims(rows, profile)
claims_matching = experiments.similarity_claims(rows, profile, definition="matching")
print(f"{len(claims + claims_matching)} claims (a setting with fewer than 8 (model, held-out task) pairs gets none)")
claims_table(claims + claims_matching)

# %%
save_results(f"05_parameter_similarity_{profile.name}", {
    "k": K, "train_tasks": train_tasks, "held_out": held_out, "n_test": n_test, "lr": fig3.lr,
    "protocol": protocol.run_settings(), "by_layer": by_layer.to_dict(orient="records"),
    "correlations": corr.to_dict(orient="records"), "correlations_shuffled": corr_shuffled.to_dict(orient="records"),
    "rows": rows.to_dict(orient="records"), "hand_check": {"layer": layer, "by_hand": by_hand, "library": library},
}, claims=claims + claims_matching, model=model, profile=profile, seeds=list(profile.seeds),
    wall_s=time.perf_counter() - started)

# %% [markdown]
# ## What we found
# Printed from the numbers above, so it always matches the run.

# %%
for c in claims + claims_matching:
    if not c.id.endswith("per_layer"):
        print(describe(c))
print(f"\ntraining time summed over the models: {sum(r['curve']['wall_s'] for r in fig3.runs):.0f} s; wall time of "
      f"this run: {time.perf_counter() - started:.0f} s (models in the cache cost ~0 s)")

# %% [markdown]
# ## Exercises
# 1. Remove the shared neurons from both sets before comparing (`a - b`, `b - a`): what is left of the
#    similarity in each layer?
# 2. Compare with a third definition: the cosine of the flattened parameter blocks restricted to the
#    union of the two sets. Which findings change?
# 3. Correlate with the decoded metric (`performance="decoded_gain"`) instead of the log-prob.
