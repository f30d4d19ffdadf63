"""Solutions to the exercises of ``mechanisms.py``: each function is what the matching blank asks for,
written in plain TransformerLens / PyTorch (no nrnlib). The exercise notebook shows each one in a
collapsible block, and ``tests/unit/test_exercises.py`` checks that block is this code."""

import torch


def grad_x_act(model, batch, layer):
    """Relevance of layer ``layer``'s neurons for one batch: ``Σ_b |Σ_pos g·a|`` with ``a`` the
    activation at ``blocks.{layer}.mlp.hook_post`` and ``g = ∂L_b/∂a``, ``L_b`` example b's mean
    cross-entropy over its answer tokens. Returns a ``[d_mlp]`` tensor."""
    stored = {}

    def keep(activation, hook):
        activation.retain_grad()
        stored["a"] = activation

    with model.hooks(fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", keep)]):
        logits = model(batch.input_ids)
    logprobs = logits[:, :-1].log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    answer = batch.target_mask[:, 1:].float()  # position t-1 predicts answer token t
    per_example_loss = -(logprobs * answer).sum(1) / answer.sum(1)
    per_example_loss.sum().backward()  # L_b depends on example b only, so one backward gives every g_b
    a = stored["a"]
    ga = (a.grad * a).detach() * batch.attention_mask[..., None]
    return ga.sum(1).abs().sum(0)


def top_k_mask(scores, k):
    """The global top ``k`` fraction of neurons of ``scores`` ([n_layers, d_mlp]) as a bool mask of the
    same shape: ``round(k · n_layers · d_mlp)`` neurons (at least one), ties to the lower index."""
    n = max(1, round(k * scores.numel()))
    order = torch.argsort(scores.flatten(), descending=True, stable=True)
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[order[:n]] = True
    return mask.reshape(scores.shape)


def zeroing_hook(neurons):
    """A forward hook for ``blocks.{l}.mlp.hook_post`` that sets the given neuron indices to 0."""

    def hook(activation, hook):  # activation: [batch, position, d_mlp]
        activation[..., neurons] = 0.0
        return activation

    return hook


def gradient_mask_hook(mask):
    """A ``Tensor.register_hook`` hook that keeps a weight's gradient where ``mask`` is True and sets it
    to exactly 0 elsewhere (``torch.where``, so a NaN of a frozen entry cannot leak through a product)."""

    def hook(grad):
        return torch.where(mask, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))

    return hook
