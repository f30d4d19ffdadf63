"""Data parallelism on torch.distributed with gloo on CPU: two processes give the single-process
attribution scores and the single-process training step (weighted by answer tokens per shard)."""

import pytest
import torch

from nrnlib.distributed import shard


def test_shards_partition_the_items_in_order():
    for n in (0, 1, 5, 8):
        for size in (1, 2, 3):
            spans = [shard(n, r, size) for r in range(size)]
            assert [i for first, count in spans for i in range(first, first + count)] == list(range(n))
            assert max(c for _, c in spans) - min(c for _, c in spans) <= 1
    with pytest.raises(ValueError, match="rank"):
        shard(4, 2, 2)


def _tasks():
    from nrnlib.tasks import Task

    parity = Task.from_records("parity", [{"input": f"Is {n} an even number?", "target": "yes" if n % 2 == 0 else "no"}
                                          for n in range(2, 18)], "classification", labels=("yes", "no"),
                               instruction="Question: {input}\nAnswer yes or no.")
    phrases = ["red apple", "blue sky at night", "green tea", "a small cat", "old stone bridge", "fast car",
               "cold winter morning", "sweet honey", "dark forest path", "bright sun", "quiet library room",
               "open door"]
    echo = Task.from_records("echo", [{"input": p, "target": p} for p in phrases], "generation",
                             instruction="Repeat exactly: {input}")
    return parity, echo


def _neurons(model):
    from nrnlib.neurons import NeuronSet

    return NeuronSet.from_indices(model.cfg.n_layers, model.cfg.d_mlp, {0: range(0, 12), 1: [3, 5, 7]}).for_model(model)


def _worker(rank, folder):
    import torch.distributed as dist

    from nrnlib import encoding
    from nrnlib.distributed import attribute_sharded, batch_shard, data_parallel
    from nrnlib.finetune import training
    from nrnlib.models import load_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        model = load_model("tiny-random-llama", device="cpu", dtype=torch.float32)
        parity, echo = _tasks()
        scores = attribute_sharded(model, parity, n_examples=7, batch_size=2)
        batch = encoding.encode_examples(model, echo, list(echo.train[:4]))  # 6 and 9 answer tokens: unequal shards
        with training(model, _neurons(model), lr=1e-2) as trainer, data_parallel(trainer) as parallel:
            parallel.step(batch_shard(batch, rank, 2))
            parallel.step(batch_shard(batch, rank, 2))
            grads = [p.grad.clone() for p in trainer.params]  # the reduced gradients of the second step
        torch.save({"scores": scores, "grads": grads, "params": {n: p.detach() for n, p in model.named_parameters()}},
                   f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    from nrnlib import encoding
    from nrnlib.attribution import attribute
    from nrnlib.finetune import training
    from nrnlib.models import load_model

    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    model = load_model("tiny-random-llama", device="cpu", dtype=torch.float32)
    parity, echo = _tasks()
    single = attribute(model, parity, n_examples=7, batch_size=2, cache=False, progress=False)
    for r in ranks:
        torch.testing.assert_close(r["scores"], single, rtol=1e-6, atol=1e-9)
    batch = encoding.encode_examples(model, echo, list(echo.train[:4]))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with training(model, _neurons(model), lr=1e-2) as trainer:
        trainer.step(batch)
        trainer.step(batch)
        grads = [p.grad.clone() for p in trainer.params]
    for r in ranks:  # the gradient of the global batch's mean over answer tokens, not a mean of shard means
        for got, expected in zip(r["grads"], grads, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    # every rank holds the same weights; against one process, AdamW's g/(|g|+eps) lets entries whose gradient
    # is near eps move differently on float noise, so all but a few in 10,000 must agree to 1e-6
    moved = differ = 0
    for name, p in model.named_parameters():
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]), name
        differ += int(((ranks[0]["params"][name] - p.detach()).abs() > 1e-6).sum())
        moved += int((p.detach() != start[name]).sum())
    assert moved > 0 and differ <= 1e-3 * moved, (differ, moved)
