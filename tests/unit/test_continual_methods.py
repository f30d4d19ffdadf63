"""Notebook 06's baselines, each against an independent computation: experience replay is one full
step on the joint batch, graded W-NCFT moves each neuron by its weight times the plain AdamW step,
and sequential LoRA trains only q and v and merges into them."""

import pytest
import torch

from nrnlib import encoding
from nrnlib.finetune import training
from nrnlib.neurons import NeuronSet
from nrnlib.replay import memory_items, replay_training, split_batch
from nrnlib.weighted_update import neuron_weights, weighted_training

LR = 1e-3


def _batch(model, task, n=3):
    return encoding.encode_examples(model, task, list(task.train[:n]))


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _restore(model, snapshot):
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(snapshot[n])


def test_split_batch_inverts_pad_batch():
    prompts, answers = [[1, 2, 3], [4], [5, 6]], [[7], [8, 9, 10], [11]]
    batch = encoding.pad_batch(prompts, answers, pad_id=0)
    assert split_batch(batch) == list(zip(prompts, answers, strict=True))


def test_replay_step_is_one_full_step_on_current_plus_memory(model, parity_task, echo_task):
    """A one-example memory replayed once per step: the step must equal one plain full fine-tuning
    step on the current batch with that example appended and padded by hand (same dropout seed:
    GPT-2's dropout is on in train mode)."""
    memory = memory_items(model, [echo_task], 1, lambda t: t.train)
    assert memory == [encoding.example_ids(model, echo_task, echo_task.train[0])]
    batch, start = _batch(model, parity_task), _params(model)
    torch.manual_seed(0)
    with replay_training(memory, memory_batch=1, seed=0)(model, lr=LR, weight_decay=0.0) as trainer:
        loss = trainer.step(batch)
    replayed = _params(model)
    _restore(model, start)
    items = [encoding.example_ids(model, parity_task, ex) for ex in parity_task.train[:3]]  # the current batch ...
    items.append(encoding.example_ids(model, echo_task, echo_task.train[0]))  # ... and the memory
    joint = encoding.pad_batch([p for p, _ in items], [a for _, a in items], encoding.pad_id(model.tokenizer))
    torch.manual_seed(0)
    with training(model, None, lr=LR) as trainer:
        loss_by_hand = trainer.step(joint)
    assert loss == loss_by_hand
    assert all(torch.equal(replayed[n], p) for n, p in model.named_parameters())


def test_replay_with_an_empty_memory_is_sequential_finetuning(model, parity_task):
    batch, start = _batch(model, parity_task), _params(model)
    torch.manual_seed(0)  # GPT-2's dropout
    with replay_training([], memory_batch=2)(model, lr=LR, weight_decay=0.0) as trainer:
        trainer.step(batch)
    replayed = _params(model)
    _restore(model, start)
    torch.manual_seed(0)
    with training(model, None, lr=LR) as trainer:
        trainer.step(batch)
    assert all(torch.equal(replayed[n], p) for n, p in model.named_parameters())


def test_neuron_weights_by_hand():
    """N = {(0,0), (0,1), (1,2)} with relevance (2, 4, -1): ranks 2, 1, 3 of 3 → q = 2/3, 1, 1/3;
    (0,1) was trained at two earlier stages (×0.25), (0,0) at one (×0.5); (1,3) is not in N."""
    relevance = torch.zeros(2, 4)
    relevance[0, 0], relevance[0, 1], relevance[1, 2], relevance[1, 3] = 2.0, 4.0, -1.0, 9.0
    current = NeuronSet.from_indices(2, 4, {0: [0, 1], 1: [2]})
    earlier = [NeuronSet.from_indices(2, 4, {0: [0, 1]}), NeuronSet.from_indices(2, 4, {0: [1], 1: [3]})]
    expected = torch.zeros(2, 4)
    expected[0, 0], expected[0, 1], expected[1, 2] = 2 / 3 * 0.5, 1.0 * 0.25, 1 / 3
    torch.testing.assert_close(neuron_weights(relevance, current, earlier), expected)
    torch.testing.assert_close(neuron_weights(relevance, current, earlier, decay=1.0),
                               torch.tensor([[2 / 3, 1, 0, 0], [0, 0, 1 / 3, 0]]))
    assert not neuron_weights(relevance, current, earlier, decay=0.0)[0].any()


def _neuron_params(mlp):
    """(tensor, dim along which neurons run) of one HF MLP, written out per architecture."""
    inner = {k: getattr(m, "_original_component", m) for k, m in mlp.named_children()}
    if "gate_proj" in inner:
        return [(inner["gate_proj"].weight, 0), (inner["up_proj"].weight, 0), (inner["down_proj"].weight, 1)]
    return [(inner["c_fc"].weight, 1), (inner["c_fc"].bias, 0), (inner["c_proj"].weight, 0)]


def test_weighted_step_moves_each_neuron_by_its_weight(model, parity_task, hf_mlps):
    """Layer 0, neurons 0..3 with weights (1, 0.5, 0, 0.25): AdamW's first step moves an entry by
    −lr·g/(|g|+ε), so neuron j's entries move by w_j times that (w = 0: bit-identical); every entry
    outside the four neurons is bit-identical. The gradient is plain autograd on the whole model."""
    L, D = model.cfg.n_layers, model.cfg.d_mlp
    neurons = NeuronSet.from_indices(L, D, {0: [0, 1, 2, 3]}).for_model(model)
    weights = torch.zeros(L, D)
    weights[0, :4] = torch.tensor([1.0, 0.5, 0.0, 0.25])
    batch, start = _batch(model, parity_task), _params(model)
    from nrnlib import losses

    model.zero_grad(set_to_none=True)
    model.train()  # as the trainer: GPT-2's dropout, with the same seed
    torch.manual_seed(0)
    losses.answer_loss(model, batch).backward()
    model.eval()
    tensors = _neuron_params(hf_mlps(model)[0][0])
    grads = [t.grad.detach().clone() for t, _ in tensors]
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    with weighted_training(model, neurons, weights, lr=LR) as trainer:
        trainer.step(batch)
    for (tensor, dim), g in zip(tensors, grads, strict=True):
        before = start[next(n for n, p in model.named_parameters() if p is tensor)]
        moved = (tensor.detach() - before).movedim(dim, 0)
        expected = (-LR * g / (g.abs() + 1e-8)).movedim(dim, 0)
        for j, w in enumerate([1.0, 0.5, 0.0, 0.25]):
            sure = g.movedim(dim, 0)[j].abs() >= 1e-6  # g/(|g|+ε) is ill-conditioned where |g| ~ ε
            torch.testing.assert_close(moved[j][sure], w * expected[j][sure], rtol=1e-3, atol=1e-9)
            if w == 0:
                assert not moved[j].any()
        assert not moved[4:].any(), "an entry outside the trained neurons moved"
    touched = {id(t) for t, _ in tensors}
    assert all(torch.equal(p, start[n]) for n, p in model.named_parameters() if id(p) not in touched)


def test_weights_of_one_equal_plain_neuron_training(model, parity_task):
    L, D = model.cfg.n_layers, model.cfg.d_mlp
    neurons = NeuronSet.from_indices(L, D, {0: [1, 5], L - 1: [0, 2, 3]}).for_model(model)
    batch, start = _batch(model, parity_task), _params(model)
    torch.manual_seed(0)  # GPT-2's dropout
    with weighted_training(model, neurons, neurons.mask.float(), lr=LR) as trainer:
        trainer.step(batch)
        trainer.step(batch)
    weighted = _params(model)
    _restore(model, start)
    torch.manual_seed(0)
    with training(model, neurons, lr=LR) as trainer:
        trainer.step(batch)
        trainer.step(batch)
    assert all(torch.equal(weighted[n], p) for n, p in model.named_parameters())


def test_lora_training_trains_q_and_v_and_merges_them(model, parity_task):
    """After the block, q and v weights moved, every other parameter is bit-identical and no LoRA
    layer is left; an error inside the block leaves the model untouched (nothing merged)."""
    from nrnlib.lora import LoraSettings, _lora_layers, lora_target_names, lora_training

    if not lora_target_names(model):
        pytest.skip("LoRA targets q_proj/v_proj: Llama only (GPT-2 fuses them in c_attn)")

    batch, start = _batch(model, parity_task), _params(model)
    factory = lora_training(LoraSettings(), seed=0)
    with pytest.raises(RuntimeError, match="stop"):
        with factory(model, lr=1e-2, weight_decay=0.0) as trainer:
            trainer.step(batch)
            raise RuntimeError("stop")
    assert all(torch.equal(p, start[n]) for n, p in model.named_parameters())
    with factory(model, lr=1e-2, weight_decay=0.0) as trainer:
        trainer.step(batch)
        trainer.step(batch)
        assert trainer.n_trainable_entries > 0
    assert not _lora_layers(model.original_model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, start[n])}
    assert changed and all("q_proj" in n or "v_proj" in n for n in changed), changed
