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
