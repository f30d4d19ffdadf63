"""Data parallelism on ``torch.distributed``: attribution and fine-tuning over several processes
(GPUs with NCCL, or CPU processes with gloo), launched with ``torchrun``.

- **Attribution** (:func:`attribute_sharded`). Relevance is a sum over examples,
  ``R = Σ_b R_b`` (``nrnlib.attribution``), so rank ``r`` of ``W`` scores a contiguous shard of the
  examples (``shard``) and an ``all_reduce(SUM)`` of the float64 partial sums gives every rank the
  single-process scores (up to float summation order).
- **Fine-tuning** (:func:`data_parallel`, :func:`batch_shard`). ``losses.answer_loss`` is the mean over a batch's answer
  tokens, ``L = (1/N) Σ_t ℓ_t`` with ``N = Σ_r n_r`` tokens over the ranks' shards of the global batch.
  Rank ``r`` computes the gradient of its own mean ``L_r = (1/n_r) Σ_{t ∈ r} ℓ_t``; since
  ``∇L = Σ_r (n_r / N) ∇L_r``, each trainable tensor's gradient is scaled by ``n_r / N`` and summed
  over ranks (``all_reduce``) before the optimizer step, in a post-accumulate-grad hook. Every rank
  then takes the same step on the same weights as one process on the whole batch. This works for
  any ``finetune.Trainer`` (full, masked or neuron-sparse: DistributedDataParallel needs module
  parameters, the sparse slices are not).

Run ``torchrun --nproc_per_node 2 -m nrnlib.distributed attribute --task word_polarity --n 64``
(``--backend gloo`` on CPU, the default without CUDA); rank 0 prints the top neurons and where it
saved the scores.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from jaxtyping import Float
from torch import Tensor

from nrnlib import encoding
from nrnlib.attribution import attribute
from nrnlib.tasks import as_task


def world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(n: int, rank: int, size: int) -> tuple[int, int]:
    """``(start, count)`` of rank ``rank``'s contiguous share of ``n`` items: the first ``n mod size``
    ranks take one more, so the shares partition ``0 … n−1`` in order."""
    if not 0 <= rank < size:
        raise ValueError(f"shard: rank must lie in [0, {size}), got {rank}")
    base, extra = divmod(n, size)
    return rank * base + min(rank, extra), base + (rank < extra)


def attribute_sharded(model, task, n_examples: int = 64, *, start: int = 0, batch_size: int = 8,
                      aggregation: str = "signed_sum", progress: bool = False) -> Float[Tensor, "n_layers d_mlp"]:
    """``attribution.attribute`` of examples ``start … start+n_examples−1``, each rank scoring its
    shard and the partial sums added with ``all_reduce``; without a process group it is ``attribute``.
    Every rank returns the whole ``[n_layers, d_mlp]`` scores (fp32, CPU)."""
    rank, size = world()
    task = as_task(task)
    first, count = shard(n_examples, rank, size)
    device = next(iter(model.parameters())).device
    if count:
        partial = attribute(model, task, n_examples=count, start=start + first, batch_size=batch_size,
                            aggregation=aggregation, cache=False, progress=progress).double()
    else:
        partial = torch.zeros(int(model.cfg.n_layers), int(model.cfg.d_mlp), dtype=torch.float64)
    if size > 1:
        partial = partial.to(device)
        dist.all_reduce(partial, op=dist.ReduceOp.SUM)
    return partial.cpu().float()


class DataParallelTrainer:
    """A ``protocol.TrainerLike`` over ``trainer`` whose ``step(local)`` takes, on every rank, the
    single-process step of the global batch made of the ranks' shards ``local`` (module docstring):
    it sets this rank's token share ``n_r / N`` that the gradient hooks of :func:`data_parallel` apply."""

    def __init__(self, trainer) -> None:
        self.inner, self.factor = trainer, 1.0
        self.params, self.n_trainable_entries = trainer.params, trainer.n_trainable_entries

    def step(self, local: encoding.EncodedBatch, total: int | None = None) -> float:
        """One step on this rank's shard; returns this rank's loss on it."""
        n = torch.tensor([float(local.n_answer_tokens)], dtype=torch.float64)
        everyone = n.clone()
        dist.all_reduce(everyone, op=dist.ReduceOp.SUM)
        self.factor = float(n / everyone)
        return self.inner.step(local, total)

    def state(self):  # noqa: ANN201 - the inner trainer's state
        return self.inner.state()

    def load_state(self, state) -> None:  # noqa: ANN001
        self.inner.load_state(state)


@contextlib.contextmanager
def data_parallel(trainer) -> Iterator:
    """Inside the block, the yielded :class:`DataParallelTrainer` steps on this rank's shard of each
    global batch; each trainable tensor's gradient is scaled by ``n_r / N`` and summed over ranks
    (a post-accumulate-grad hook) before the optimizer step. Without a process group it yields
    ``trainer`` itself."""
    rank, size = world()
    if size == 1:
        yield trainer
        return
    wrapped = DataParallelTrainer(trainer)

    def reduce(p: Tensor) -> None:
        p.grad.mul_(wrapped.factor)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)

    handles = [p.register_post_accumulate_grad_hook(reduce) for p in trainer.params]
    try:
        yield wrapped
    finally:
        for h in handles:
            h.remove()


def batch_shard(batch: encoding.EncodedBatch, rank: int, size: int) -> encoding.EncodedBatch:
    """Rank ``rank``'s rows of a global batch (``shard`` of its rows)."""
    first, count = shard(len(batch), rank, size)
    rows = slice(first, first + count)
    return encoding.EncodedBatch(batch.input_ids[rows], batch.attention_mask[rows], batch.target_mask[rows],
                                 batch.prompt_lengths[rows])


def _main(argv: Sequence[str] | None = None) -> None:
    from nrnlib.models import load_model
    from nrnlib.selection import select_neurons

    parser = argparse.ArgumentParser(prog="python -m nrnlib.distributed", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    att = sub.add_parser("attribute", help="relevance of every MLP neuron for a task, examples sharded over ranks")
    att.add_argument("--task", required=True)
    att.add_argument("--n", type=int, default=64, help="attribution examples (train split)")
    att.add_argument("--batch", type=int, default=8)
    att.add_argument("--model", default="smollm2-135m-instruct")
    att.add_argument("--out", default=None, help="where rank 0 saves the scores (torch.save)")
    att.add_argument("--backend", default=None, help="gloo or nccl (default: nccl with CUDA, else gloo)")
    args = parser.parse_args(argv)
    backend = args.backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend)
    try:
        rank, size = world()
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if backend == "nccl" else "cpu"
        model = load_model(args.model, device=device)
        scores = attribute_sharded(model, args.task, args.n, batch_size=args.batch)
        if rank == 0:
            top = select_neurons(scores, k=0.10)
            print(f"{size} ranks ({backend}): {args.n} examples of {args.task}; top-10% set {top.count} neurons, "
                  f"{len(top.layers())} layers; max relevance {float(scores.max()):.4g}")
            if args.out:
                torch.save(scores, args.out)
                print(f"scores saved to {args.out}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _main()
