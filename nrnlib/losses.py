"""Log-probabilities of answer tokens given their prompt: the quantity that evaluation,
attribution and fine-tuning all start from.

The vocabulary projection is applied only at the positions that predict an answer token (or at
the last prompt token), so a batch never materializes ``[batch, seq, vocab]`` logits.
The forward runs through the Hugging Face modules that the TransformerBridge wraps in place, so
every TransformerLens hook (``blocks.{l}.mlp.hook_post``, ...) fires as in ``model(...)``.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from nrnlib.encoding import EncodedBatch


def final_hidden(model, batch: EncodedBatch) -> Float[Tensor, "batch seq d_model"]:
    """Residual stream after the final norm, at every position."""
    hf = model.original_model
    out = hf.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long())
    return out.last_hidden_state


def unembed(model, hidden: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
    return model.original_model.get_output_embeddings()(hidden)


def last_prompt_logits(model, batch: EncodedBatch) -> Float[Tensor, "batch vocab"]:
    """Logits at the last prompt token: the distribution of the first answer token (fp32)."""
    hidden = final_hidden(model, batch)
    rows = torch.arange(len(batch), device=hidden.device)
    return unembed(model, hidden[rows, batch.last_prompt_index]).float()


def answer_token_logits(model, batch: EncodedBatch) -> Float[Tensor, "n_answer vocab"]:
    """Logits predicting each answer token, in ``target_mask.nonzero()`` order (fp32)."""
    hidden = final_hidden(model, batch)
    b, t = batch.target_mask.nonzero(as_tuple=True)
    return unembed(model, hidden[b, t - 1]).float()


def answer_token_logprobs(model, batch: EncodedBatch) -> Float[Tensor, " n_answer"]:
    """``log p(answer_t | prompt, answer_<t)`` for every answer token of the batch."""
    logits = answer_token_logits(model, batch)
    targets = batch.input_ids[batch.target_mask]
    return logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)


def answer_loss(model, batch: EncodedBatch) -> Float[Tensor, ""]:
    """Mean cross-entropy over the answer tokens of the batch (the loss of Paper A's attribution)."""
    if batch.n_answer_tokens == 0:
        raise ValueError("The batch has no answer tokens: encode it with with_answers=True")
    return -answer_token_logprobs(model, batch).mean()


def per_example_loss(model, batch: EncodedBatch) -> Float[Tensor, " batch"]:
    """Mean cross-entropy over each example's answer tokens: ``L_b = -mean_t log p(y_bt | y_b<t, x_b)``.

    Attribution differentiates ``Σ_b L_b``, so an example's gradient never depends on the other
    examples of its batch (each example weighs the same, whatever its answer length).
    """
    n_answer = batch.target_mask.sum(dim=1)
    if bool((n_answer == 0).any()):
        raise ValueError("Every example needs at least one answer token: encode with with_answers=True")
    logp = answer_token_logprobs(model, batch)  # in target_mask.nonzero() order
    rows = batch.target_mask.nonzero(as_tuple=True)[0]
    nll = torch.zeros(len(batch), dtype=logp.dtype, device=logp.device).index_add(0, rows, -logp)
    return nll / n_answer.to(nll.device, nll.dtype)
