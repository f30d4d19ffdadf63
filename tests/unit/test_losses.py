"""The shared-prefix forward (``losses.final_hidden(..., share_prefix=True)``) against a plain
Hugging Face forward over the whole batch: the same answer log-probs, the same loss gradient, the
same result under a zeroing hook."""

import pytest
import torch

from nrnlib import losses
from nrnlib.encoding import EncodedBatch


def _batch(prefix: list[int], rests: list[list[int]], answers: list[list[int]], pad: int = 0) -> EncodedBatch:
    """Right-padded rows ``prefix + rest + answer`` (independently of ``encoding.pad_batch``)."""
    rows = [prefix + r + a for r, a in zip(rests, answers, strict=True)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    attention = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows])
    target = torch.zeros_like(attention)
    for i, (r, a) in enumerate(zip(rests, answers, strict=True)):
        target[i, len(prefix) + len(r): len(prefix) + len(r) + len(a)] = True
    return EncodedBatch(ids, attention, target, torch.tensor([len(prefix) + len(r) for r in rests]))


@pytest.fixture
def batch(model):
    vocab = model.cfg.d_vocab
    g = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(1, vocab, (n,), generator=g).tolist()

    return _batch(ids(12), [ids(3), ids(7), ids(1)], [ids(2), ids(4), ids(1)])


def _plain_answer_logprobs(model, batch: EncodedBatch) -> torch.Tensor:
    """``log p(answer token)`` from the plain HF forward's logits at every position."""
    logits = model.original_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()).logits
    b, t = batch.target_mask.nonzero(as_tuple=True)
    return logits[b, t - 1].float().log_softmax(-1).gather(-1, batch.input_ids[b, t][:, None]).squeeze(-1)


def test_shared_prefix_length_counts_the_common_attended_tokens():
    b = _batch([5, 6, 7], [[8, 9], [8, 1, 2], [3]], [[4], [4], [4]])
    assert losses.shared_prefix_length(b) == 3  # position 3 holds 8, 8, 3
    same = _batch([5, 6], [[7], [7]], [[4], [4]])  # identical rows: one position is left to each row
    assert losses.shared_prefix_length(same) == same.input_ids.shape[1] - 1


def test_shared_prefix_gives_the_plain_forward_log_probs(model, batch):
    assert losses.shared_prefix_length(batch) >= losses.MIN_SHARED_PREFIX  # the shared path runs
    with torch.no_grad():
        expected = _plain_answer_logprobs(model, batch)
        shared = losses.answer_token_logprobs(model, batch, share_prefix=True)
        plain = losses.answer_token_logprobs(model, batch)
        last = losses.last_prompt_logits(model, batch, share_prefix=True)
        logits = model.original_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()).logits
    torch.testing.assert_close(shared, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain, expected, rtol=1e-5, atol=1e-5)
    rows = torch.arange(len(batch))
    torch.testing.assert_close(last, logits[rows, batch.prompt_lengths - 1].float(), rtol=1e-5, atol=1e-5)


def test_shared_prefix_gives_the_plain_forward_gradient(model, batch):
    params = [p for p in model.original_model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    (-_plain_answer_logprobs(model, batch).mean()).backward()
    expected = [None if p.grad is None else p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    losses.answer_loss(model, batch, share_prefix=True).backward()
    got = [p.grad for p in params]
    model.zero_grad(set_to_none=True)
    assert sum(e is not None for e in expected) > len(params) // 2
    for e, g in zip(expected, got, strict=True):
        if e is None:  # a parameter the loss does not reach (e.g. GPT-2's unused position rows)
            assert g is None or not g.any()
        else:
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def test_shared_prefix_under_a_zeroing_hook(model, batch):
    """A hook that zeroes neurons at every position fires on the prefix pass as on the rest."""
    name = "blocks.0.mlp.hook_post"

    def zero_first_neurons(x, hook=None):
        x = x.clone()
        x[..., :3] = 0.0
        return x

    with torch.no_grad(), model.hooks(fwd_hooks=[(name, zero_first_neurons)]):
        expected = _plain_answer_logprobs(model, batch)
        shared = losses.answer_token_logprobs(model, batch, share_prefix=True)
    with torch.no_grad():
        intact = _plain_answer_logprobs(model, batch)
    assert not torch.allclose(expected, intact)  # the hook changes the answer
    torch.testing.assert_close(shared, expected, rtol=1e-5, atol=1e-5)


def test_dropout_in_training_mode_runs_every_row_in_full(model, batch):
    """A shared prefix would give every row one dropout mask: with dropout active the rows run in
    full, so the same seed gives the same values as the plain forward."""
    rates = [m.p for m in model.original_model.modules() if isinstance(m, torch.nn.Dropout)]
    config_rates = [v for k, v in vars(model.original_model.config).items()
                    if k.endswith(("dropout", "pdrop")) and isinstance(v, (int, float))]
    model.original_model.train()
    try:
        assert losses.dropout_active(model) == (any(r > 0 for r in rates) or any(r > 0 for r in config_rates))
        torch.manual_seed(0)
        with torch.no_grad():
            shared = losses.answer_token_logprobs(model, batch, share_prefix=True)
        torch.manual_seed(0)
        with torch.no_grad():
            expected = _plain_answer_logprobs(model, batch)
    finally:
        model.original_model.eval()
    assert not losses.dropout_active(model)
    torch.testing.assert_close(shared, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shared", [True, False], ids=["shared-prefix", "no-common-prefix"])
def test_prompt_pass_then_answers_gives_the_plain_forward_log_probs(model, batch, shared):
    """The prompts run once (a shared prefix, pads, the rest) and the answers on their cache: the same
    answer logits as the plain right-padded forward; the cache is cropped back to the prompts."""
    if not shared:  # rows that differ from their first token: no prefix pass
        ids = batch.input_ids.clone()
        ids[:, 0] = torch.arange(1, len(batch) + 1)
        batch = EncodedBatch(ids, batch.attention_mask, batch.target_mask, batch.prompt_lengths)
    with torch.no_grad():
        prompts = losses.prompt_pass(model, batch, pad_id=0)
        logits = losses.answer_logits_after_prompt(model, batch, prompts)
        plain = model.original_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()).logits
    b, t = batch.target_mask.nonzero(as_tuple=True)
    torch.testing.assert_close(logits, plain[b, t - 1].float(), rtol=1e-5, atol=1e-5)
    rows = torch.arange(len(batch))
    last = losses.unembed(model, prompts.last_hidden).float()
    torch.testing.assert_close(last, plain[rows, batch.prompt_lengths - 1].float(), rtol=1e-5, atol=1e-5)
    assert prompts.cache.get_seq_length() == prompts.width == int(batch.prompt_lengths.max())
    assert (prompts.shared >= losses.MIN_SHARED_PREFIX) == shared
    # the layout: every prompt ends at the last column, its tokens in order, pads unattended
    for i, n in enumerate(batch.prompt_lengths.tolist()):
        row = prompts.input_ids[i][prompts.attention_mask[i].bool()]
        assert row.tolist() == batch.input_ids[i, :n].tolist()
        assert bool(prompts.attention_mask[i, -1])


def test_greedy_after_the_prompt_pass_matches_plain_generate(model, echo_task):
    """Greedy decoding on the prompts' cache gives plain ``generate``'s tokens (left-padded, no cache)."""
    from nrnlib.encoding import encode_examples, end_of_answer_id, pad_id
    from nrnlib.evaluate import greedy_tokens

    tok = model.tokenizer
    batch = encode_examples(model, echo_task, list(echo_task.test[:5]), with_answers=False)
    with torch.no_grad():
        prompts = losses.prompt_pass(model, batch, pad_id(tok))
        assert prompts.shared >= losses.MIN_SHARED_PREFIX  # the chat template and instruction run once
        got = greedy_tokens(model, prompts, max_new_tokens=6)
    width = int(batch.prompt_lengths.max())
    ids = torch.full((len(batch), width), pad_id(tok))
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, n in enumerate(batch.prompt_lengths.tolist()):
        ids[i, width - n:], mask[i, width - n:] = batch.input_ids[i, :n], 1
    out = model.original_model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=6,
                                        pad_token_id=pad_id(tok), eos_token_id=end_of_answer_id(tok))
    assert got.tolist() == out[:, width:].tolist()
    assert got.shape[1] >= 1
