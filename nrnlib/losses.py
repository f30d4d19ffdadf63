"""Log-probabilities of answer tokens given their prompt: the quantity that evaluation,
attribution and fine-tuning all start from.

The vocabulary projection is applied only at the positions that predict an answer token (or at
the last prompt token), so a batch never materializes ``[batch, seq, vocab]`` logits.
The forward runs through the Hugging Face modules that the TransformerBridge wraps in place, so
every TransformerLens hook (``blocks.{l}.mlp.hook_post``, ...) fires as in ``model(...)``.

**Shared prompt prefix** (``share_prefix=True``: scoring, the dev loss and training steps): the prompts of one
task begin with the same chat template and instruction (36-48 tokens of our tasks' 56-177). When
every row of a batch starts with the same ``P`` tokens, the prefix runs once (batch 1), its keys
and values are repeated over the batch, and only the ``T − P`` remaining positions run per row. A
causal model's states at a position depend only on the positions before it, so the result equals
the full forward up to floating-point summation order, and so does its gradient: the backward sums
the rows' gradients into the one prefix (tests/unit/test_losses.py); with dropout
active (training mode, a rate above 0: GPT-2, not SmolLM2) every row runs in full. Hooks fire twice
per module (prefix, then the rest), so callers that record activations per position must not use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from nrnlib.encoding import EncodedBatch

MIN_SHARED_PREFIX = 8  # shorter common prefixes run with the rest (the second pass's overhead outweighs them)


def shared_prefix_length(batch: EncodedBatch) -> int:
    """``P``: the number of leading positions where every row holds the same (attended) token,
    at most ``T − 1`` so that every row keeps at least one position of its own."""
    ids = batch.input_ids
    same = (ids == ids[:1]).all(0) & batch.attention_mask.all(0)
    return min(int(same.long().cumprod(0).sum()), ids.shape[1] - 1)


def dropout_active(model) -> bool:
    """True when the forward is random: the model in training mode with a dropout probability above 0
    (a ``Dropout`` module, or a ``*dropout``/``*pdrop`` setting of the config applied functionally)."""
    hf = model.original_model
    if not hf.training:
        return False
    config = getattr(hf, "config", None)
    rates = [v for k, v in vars(config).items() if k.endswith(("dropout", "pdrop"))] if config is not None else []
    return (any(isinstance(v, (int, float)) and v > 0 for v in rates)
            or any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in hf.modules()))


def final_hidden(model, batch: EncodedBatch, share_prefix: bool = False) -> Float[Tensor, "batch seq d_model"]:
    """Residual stream after the final norm, at every position; ``share_prefix`` runs a common
    prompt prefix once (module docstring), unless dropout is active (the rows would then share one
    dropout mask on the prefix)."""
    base = model.original_model.base_model
    n_shared = shared_prefix_length(batch) if share_prefix and len(batch) > 1 and not dropout_active(model) else 0
    if n_shared < MIN_SHARED_PREFIX:
        return base(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()).last_hidden_state
    prefix = base(input_ids=batch.input_ids[:1, :n_shared], attention_mask=batch.attention_mask[:1, :n_shared].long(),
                  use_cache=True)
    cache = prefix.past_key_values
    cache.batch_repeat_interleave(len(batch))
    rest = base(input_ids=batch.input_ids[:, n_shared:], attention_mask=batch.attention_mask.long(),
                past_key_values=cache, use_cache=True).last_hidden_state
    return torch.cat([prefix.last_hidden_state.expand(len(batch), -1, -1), rest], dim=1)


def unembed(model, hidden: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
    return model.original_model.get_output_embeddings()(hidden)


def last_prompt_logits(model, batch: EncodedBatch, share_prefix: bool = False) -> Float[Tensor, "batch vocab"]:
    """Logits at the last prompt token: the distribution of the first answer token (fp32)."""
    hidden = final_hidden(model, batch, share_prefix)
    rows = torch.arange(len(batch), device=hidden.device)
    return unembed(model, hidden[rows, batch.last_prompt_index]).float()


def answer_token_logits(model, batch: EncodedBatch, share_prefix: bool = False) -> Float[Tensor, "n_answer vocab"]:
    """Logits predicting each answer token, in ``target_mask.nonzero()`` order (fp32)."""
    hidden = final_hidden(model, batch, share_prefix)
    b, t = batch.target_mask.nonzero(as_tuple=True)
    return unembed(model, hidden[b, t - 1]).float()


def answer_token_logprobs(model, batch: EncodedBatch, share_prefix: bool = False) -> Float[Tensor, " n_answer"]:
    """``log p(answer_t | prompt, answer_<t)`` for every answer token of the batch."""
    logits = answer_token_logits(model, batch, share_prefix)
    targets = batch.input_ids[batch.target_mask]
    return logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)


def answer_loss(model, batch: EncodedBatch, share_prefix: bool = False) -> Float[Tensor, ""]:
    """Mean cross-entropy over the answer tokens of the batch (the loss of Paper A's attribution).

    With ``share_prefix`` the common prompt prefix runs once and its states are broadcast over the
    rows; the backward sums the rows' gradients into it, so the gradient equals the full forward's
    (the prefix's states are the same function of the weights in every row)."""
    if batch.n_answer_tokens == 0:
        raise ValueError("The batch has no answer tokens: encode it with with_answers=True")
    return -answer_token_logprobs(model, batch, share_prefix).mean()


def per_example_loss(model, batch: EncodedBatch, share_prefix: bool = False) -> Float[Tensor, " batch"]:
    """Mean cross-entropy over each example's answer tokens: ``L_b = -mean_t log p(y_bt | y_b<t, x_b)``.

    Attribution differentiates ``Σ_b L_b``, so an example's gradient never depends on the other
    examples of its batch (each example weighs the same, whatever its answer length).
    """
    n_answer = batch.target_mask.sum(dim=1)
    if bool((n_answer == 0).any()):
        raise ValueError("Every example needs at least one answer token: encode with with_answers=True")
    logp = answer_token_logprobs(model, batch, share_prefix)  # in target_mask.nonzero() order
    rows = batch.target_mask.nonzero(as_tuple=True)[0]
    nll = torch.zeros(len(batch), dtype=logp.dtype, device=logp.device).index_add(0, rows, -logp)
    return nll / n_answer.to(nll.device, nll.dtype)


# --------------------------------------------------------------------------------------------------
# one prompt pass for scoring and decoding
# --------------------------------------------------------------------------------------------------


@dataclass
class PromptPass:
    """The prompts of a batch run once, laid out as ``[shared prefix][pads][rest of prompt]`` so that
    every prompt ends at column ``W − 1``: ``input_ids``/``attention_mask`` [batch, W] in that layout,
    ``cache`` the keys and values of all W columns, ``last_hidden`` the final-norm residual at each
    row's last prompt token, ``lengths`` the real prompt lengths (row i's tokens sit at positions
    0 … n_i − 1: pads take no position), ``shared`` the prefix length run once (0: none)."""

    input_ids: Int[Tensor, "batch width"]
    attention_mask: Int[Tensor, "batch width"]
    cache: object  # transformers Cache
    last_hidden: Float[Tensor, "batch d_model"]
    lengths: Int[Tensor, " batch"]
    shared: int = 0

    @property
    def width(self) -> int:
        return self.input_ids.shape[1]


def positions(attention_mask: Int[Tensor, "batch seq"]) -> Int[Tensor, "batch seq"]:
    """Position ids that skip pads: ``cumsum(mask) − 1`` (pads get 0; they are never attended)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def crop_cache(cache, length: int) -> None:
    """Keep the first ``length`` positions of a transformers cache (its ``crop`` takes minus the
    number of positions to drop)."""
    cache.crop(min(0, length - cache.get_seq_length()))


def prompt_pass(model, batch: EncodedBatch, pad_id: int) -> PromptPass:
    """Run the prompts of ``batch`` (its ``prompt_lengths`` leading tokens per row) once: the common
    prefix at batch 1 (as ``final_hidden`` with ``share_prefix``; at least ``MIN_SHARED_PREFIX``
    tokens, else none), then each row's rest, right-aligned behind pads."""
    lengths = batch.prompt_lengths.to(batch.input_ids.device)
    width, n = int(lengths.max()), len(batch)
    same = (batch.input_ids == batch.input_ids[:1]).all(0)[: int(lengths.min()) - 1]
    n_shared = int(same.long().cumprod(0).sum()) if n > 1 and not dropout_active(model) else 0
    n_shared = n_shared if n_shared >= MIN_SHARED_PREFIX else 0
    ids = torch.full((n, width), pad_id, dtype=torch.long, device=lengths.device)
    mask = torch.zeros((n, width), dtype=torch.long, device=lengths.device)
    for i, length in enumerate(lengths.tolist()):
        ids[i, :n_shared] = batch.input_ids[i, :n_shared]
        ids[i, width - length + n_shared:] = batch.input_ids[i, n_shared:length]
        mask[i, :n_shared] = 1
        mask[i, width - length + n_shared:] = 1
    base = model.original_model.base_model
    cache = None
    if n_shared:
        cache = base(input_ids=ids[:1, :n_shared], attention_mask=mask[:1, :n_shared], use_cache=True).past_key_values
        cache.batch_repeat_interleave(n)
    out = base(input_ids=ids[:, n_shared:], attention_mask=mask, position_ids=positions(mask)[:, n_shared:],
               past_key_values=cache, use_cache=True)
    return PromptPass(ids, mask, out.past_key_values, out.last_hidden_state[:, -1], lengths, n_shared)


def answer_logits_after_prompt(model, batch: EncodedBatch, prompts: PromptPass) -> Float[Tensor, "n_answer vocab"]:
    """``answer_token_logits`` from a ``prompt_pass``: only the answer tokens run (on the prompts'
    cache, which is cropped back to the prompts afterwards, ready for decoding)."""
    rows, cols = batch.target_mask.nonzero(as_tuple=True)
    offset = cols - batch.prompt_lengths.to(cols.device)[rows]  # answer token index within its row
    n_answer = int(offset.max()) + 1
    answers = torch.zeros((len(batch), n_answer), dtype=torch.long, device=cols.device)
    answer_mask = torch.zeros_like(answers)
    answers[rows, offset] = batch.input_ids[rows, cols]
    answer_mask[rows, offset] = 1
    mask = torch.cat([prompts.attention_mask, answer_mask], dim=1)
    hidden = [prompts.last_hidden[:, None]]
    if n_answer > 1:  # answer token t (t >= 1) is predicted at answer column t - 1
        out = model.original_model.base_model(
            input_ids=answers[:, :-1], attention_mask=mask[:, :-1],
            position_ids=prompts.lengths[:, None] + torch.arange(n_answer - 1, device=cols.device),
            past_key_values=prompts.cache, use_cache=True)
        crop_cache(prompts.cache, prompts.width)
        hidden.append(out.last_hidden_state)
    return unembed(model, torch.cat(hidden, dim=1)[rows, offset]).float()
