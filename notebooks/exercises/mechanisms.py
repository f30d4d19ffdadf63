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
# # Exercises — the mechanisms of notebooks 01–03, written by you
#
# **Objectives.** Write the four pieces the library hides, in plain TransformerLens and PyTorch, and
# check each against nrnlib: (1) gradient × activation relevance of one layer's neurons with a hook
# (notebook 01), (2) the global top-k selection (01), (3) the zeroing hook that deactivates neurons
# (02), (4) the gradient mask that trains only some neurons (03).
#
# **How to use it.** Each exercise is a function with its docstring and a blank body
# (`raise NotImplementedError`). Replace the body, run the cell, then run the check below it: it
# compares your function with the library on the embedded model and says what differs. Hints and
# solutions are folded; open them when stuck. (The checks live in `checks.py`, the solutions in
# `solutions.py`; CI runs this notebook with the solutions filled in and checks that every check
# fails on the blanks.)

# %% tags=["parameters"]
MODEL = "smollm2-135m-instruct"
TASK = "word_polarity"

# %%
import checks

from nrnlib.models import load_model
from nrnlib.tasks import get_task

model = load_model(MODEL)
task = get_task(TASK)
print(f"{MODEL}: {model.cfg.n_layers} layers x {model.cfg.d_mlp} MLP neurons; task {task.name}")

# %% [markdown]
# ## 1. Gradient × activation (notebook 01)
# Paper A scores neuron $j$ of layer $l$ by $|\sum_{pos} g \cdot a|$ per example, summed over
# examples: $a$ is the neuron's activation at `blocks.{l}.mlp.hook_post` and $g = \partial L_b/\partial a$,
# with $L_b$ the example's mean cross-entropy over its answer tokens. `batch` is an
# `nrnlib.encoding.EncodedBatch`: `input_ids` and `attention_mask` `[batch, seq]`, `target_mask` True on
# answer tokens (right-padded).

# %% tags=["exercise"]
def grad_x_act(model, batch, layer):
    """Relevance of layer ``layer``'s neurons for one batch: ``Σ_b |Σ_pos g·a|`` with ``a`` the
    activation at ``blocks.{layer}.mlp.hook_post`` and ``g = ∂L_b/∂a``, ``L_b`` example b's mean
    cross-entropy over its answer tokens. Returns a ``[d_mlp]`` tensor.
    """
    raise NotImplementedError("your code here")


# %% [markdown]
# <details><summary>Hint</summary>
#
# In a hook, call `activation.retain_grad()` and keep the tensor; run the model inside
# `model.hooks(fwd_hooks=[(name, hook)])`. The logit at position $t-1$ predicts token $t$. Summing the
# per-example losses before one `backward()` still gives each example its own $g$: $L_b$ depends on
# example $b$ only.
#
# </details>

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def grad_x_act(model, batch, layer):
#     """Relevance of layer ``layer``'s neurons for one batch: ``Σ_b |Σ_pos g·a|`` with ``a`` the
#     activation at ``blocks.{layer}.mlp.hook_post`` and ``g = ∂L_b/∂a``, ``L_b`` example b's mean
#     cross-entropy over its answer tokens. Returns a ``[d_mlp]`` tensor."""
#     stored = {}
#
#     def keep(activation, hook):
#         activation.retain_grad()
#         stored["a"] = activation
#
#     with model.hooks(fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", keep)]):
#         logits = model(batch.input_ids)
#     logprobs = logits[:, :-1].log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
#     answer = batch.target_mask[:, 1:].float()  # position t-1 predicts answer token t
#     per_example_loss = -(logprobs * answer).sum(1) / answer.sum(1)
#     per_example_loss.sum().backward()  # L_b depends on example b only, so one backward gives every g_b
#     a = stored["a"]
#     ga = (a.grad * a).detach() * batch.attention_mask[..., None]
#     return ga.sum(1).abs().sum(0)
# ```
#
# </details>

# %%
print(checks.check_grad_x_act(grad_x_act, model, task))

# %% [markdown]
# ## 2. Top-k selection (notebook 01)
# Take the global top $k$ fraction of all neurons by score. Ties go to the lower (layer, neuron) index.

# %% tags=["exercise"]
def top_k_mask(scores, k):
    """The global top ``k`` fraction of neurons of ``scores`` ([n_layers, d_mlp]) as a bool mask of the
    same shape: ``round(k · n_layers · d_mlp)`` neurons (at least one), ties to the lower index.
    """
    raise NotImplementedError("your code here")


# %% [markdown]
# <details><summary>Hint</summary>
#
# Flatten, `torch.argsort(..., descending=True, stable=True)` (stable keeps the lower index first on
# ties), mark the first $n$, reshape.
#
# </details>

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def top_k_mask(scores, k):
#     """The global top ``k`` fraction of neurons of ``scores`` ([n_layers, d_mlp]) as a bool mask of the
#     same shape: ``round(k · n_layers · d_mlp)`` neurons (at least one), ties to the lower index."""
#     n = max(1, round(k * scores.numel()))
#     order = torch.argsort(scores.flatten(), descending=True, stable=True)
#     mask = torch.zeros(scores.numel(), dtype=torch.bool)
#     mask[order[:n]] = True
#     return mask.reshape(scores.shape)
# ```
#
# </details>

# %%
print(checks.check_top_k(top_k_mask))

# %% [markdown]
# ## 3. Deactivation is a zeroing hook (notebook 02)
# A TransformerLens forward hook receives the activation and the hook point and may return a new
# activation. Write one that zeroes the given neurons at every position.

# %% tags=["exercise"]
def zeroing_hook(neurons):
    """A forward hook for ``blocks.{l}.mlp.hook_post`` that sets the given neuron indices to 0."""
    raise NotImplementedError("your code here")


# %% [markdown]
# <details><summary>Hint</summary>
#
# The neuron dimension is the last one: `activation[..., neurons] = 0.0`, then return the activation.
#
# </details>

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def zeroing_hook(neurons):
#     """A forward hook for ``blocks.{l}.mlp.hook_post`` that sets the given neuron indices to 0."""
#
#     def hook(activation, hook):  # activation: [batch, position, d_mlp]
#         activation[..., neurons] = 0.0
#         return activation
#
#     return hook
# ```
#
# </details>

# %%
print(checks.check_zeroing_hook(zeroing_hook, model, task))

# %% [markdown]
# ## 4. Training only some neurons: the gradient mask (notebook 03)
# Masked fine-tuning registers a hook on each MLP weight that holds selected neurons; the hook gets
# the weight's gradient and returns the gradient to use. `mask` is a bool tensor broadcastable to the
# weight, True on the selected neurons' rows or columns.

# %% tags=["exercise"]
def gradient_mask_hook(mask):
    """A ``Tensor.register_hook`` hook that keeps a weight's gradient where ``mask`` is True and sets it
    to exactly 0 elsewhere (``torch.where``, so a NaN of a frozen entry cannot leak through a product).
    """
    raise NotImplementedError("your code here")


# %% [markdown]
# <details><summary>Hint</summary>
#
# `grad * mask` looks right, but $\mathrm{NaN} \cdot 0 = \mathrm{NaN}$: a frozen entry with a NaN
# gradient would poison the optimizer. Choose between the gradient and a zero instead.
#
# </details>

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def gradient_mask_hook(mask):
#     """A ``Tensor.register_hook`` hook that keeps a weight's gradient where ``mask`` is True and sets it
#     to exactly 0 elsewhere (``torch.where``, so a NaN of a frozen entry cannot leak through a product)."""
#
#     def hook(grad):
#         return torch.where(mask, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
#
#     return hook
# ```
#
# </details>

# %%
print(checks.check_gradient_mask(gradient_mask_hook, model, task))

# %% [markdown]
# ## What next
# Notebook 03 trains neuron-sparse instead of masked: only the selected slices are parameters (see
# `nrnlib.sparse`). Exercise: with your gradient mask and `torch.optim.AdamW` over the masked weights,
# take one step and compare with `nrnlib.finetune.training(model, neurons, mode="sparse")`.
