"""The training protocol (``nrnlib.protocol``): dev split, early stopping with best-weight
restoration, lr selection on dev, cached and resumable arms, determinism by seed, loss curves."""

import math
from dataclasses import replace

import pytest
import torch

import nrnlib.protocol as P
from nrnlib import losses
from nrnlib.finetune import _encode_items, batch_stream, training
from nrnlib.model_state import attached_hooks
from nrnlib.neurons import NeuronSet
from nrnlib.profiles import PROFILES
from nrnlib.tasks import Task

PROTOCOL = P.Protocol(dev_size=4, eval_every=2, patience=2, max_steps=6, batch_size=2, dev_batch_size=4,
                      lr_grids={"neurons": (1e-12, 1e-2, 30.0), "all": (1e-3,)})


@pytest.fixture(scope="module")
def task():
    """Classification with single-token labels: 24 train examples (6 of them dev) and 16 test."""
    records = [{"input": f"Is {n} an even number?", "target": "yes" if n % 2 == 0 else "no"} for n in range(2, 42)]
    return Task.from_records("parity40", records, "classification", labels=("yes", "no"), test_fraction=0.4,
                             instruction="Question: {input}\nAnswer yes or no.")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NRN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NRN_NO_CACHE", raising=False)
    return tmp_path / "cache"


def _neurons(model):
    L, D = model.cfg.n_layers, model.cfg.d_mlp
    return NeuronSet.from_indices(L, D, {0: [1, 7, 30], L - 1: list(range(0, D, 5))})


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


# ---------------------------------------------------------------- dev split


def test_dev_split_is_deterministic_disjoint_and_nested(task):
    a, b = P.dev_split(task, 4), P.dev_split(task, 4)
    assert a == b and len(a.dev) == 4 and len(a.train) == len(task.train) - 4
    key = lambda ex: (ex["input"], ex["target"])  # noqa: E731
    assert not {key(e) for e in a.dev} & {key(e) for e in a.train}
    assert sorted(map(key, a.dev + a.train)) == sorted(map(key, task.train))
    assert set(map(key, P.dev_split(task, 2).dev)) <= set(map(key, a.dev))  # a smaller dev is a subset
    assert len(P.dev_split(task, 100).dev) == int(0.25 * len(task.train))  # capped at a quarter of train
    assert P.dev_split(task, 4, n_train=5).train == a.train[:5]
    assert a.digests() == {"parity40:train": task.digest(a.train), "parity40:dev": task.digest(a.dev)}


def test_dev_examples_are_never_trained_on(model, task, monkeypatch):
    split = P.dev_split(task, PROTOCOL.dev_size)
    dev_rows = {tuple(p + a) for p, a in _encode_items(model, [(task, ex) for ex in split.dev])}
    seen, real = [], losses.answer_loss

    def spy(m, batch, **kw):
        for ids, keep in zip(batch.input_ids.tolist(), batch.attention_mask.tolist(), strict=True):
            seen.append(tuple(i for i, k in zip(ids, keep, strict=True) if k))
        return real(m, batch, **kw)

    monkeypatch.setattr(losses, "answer_loss", spy)
    P.train_to_convergence(model, task, replace(PROTOCOL, patience=99), lr=1e-3, neurons=_neurons(model))
    assert len(seen) == PROTOCOL.max_steps * PROTOCOL.batch_size and not set(seen) & dev_rows


def test_task_batches_draw_each_step_from_one_task_in_turn(model):
    """``task_batch_stream``: step s holds rows of task s mod K only; within a task, every example
    once per epoch (its own seeded permutation); the same seed gives the same batches."""
    from nrnlib.finetune import task_batch_stream

    vocab = model.cfg.d_vocab
    by_task = [[([1 + t, 100 + 10 * t + i], [vocab - 1 - t]) for i in range(n)] for t, n in enumerate((4, 6, 2))]

    def rows(seed: int, steps: int) -> list[list[tuple[int, ...]]]:
        stream = task_batch_stream(model, by_task, 2, seed)
        out = []
        for _ in range(steps):
            b = next(stream)
            out.append([tuple(i for i, k in zip(r, m, strict=True) if k)
                        for r, m in zip(b.input_ids.tolist(), b.attention_mask.tolist(), strict=True)])
        return out

    steps = rows(5, 18)  # 6 steps per task: task 0 sees 12 rows = 3 epochs of 4, task 2 six epochs of 2
    for s, batch in enumerate(steps):
        assert {r[0] - 1 for r in batch} == {s % 3}  # one task per step, the tasks in turn
    for t, examples in enumerate(by_task):
        seen = [r for batch in steps[t::3] for r in batch]
        n = len(examples)
        for epoch in range(len(seen) // n):  # each epoch a permutation of the task's examples
            assert sorted(seen[epoch * n:(epoch + 1) * n]) == sorted(tuple(p + a) for p, a in examples)
    assert rows(5, 18) == steps and rows(6, 18) != steps
    with pytest.raises(ValueError, match="at least one task"):
        next(task_batch_stream(model, [by_task[0], []], 2, 0))


def test_a_multi_task_run_with_task_batches_trains_on_one_task_per_step(model, task, monkeypatch):
    other = Task.from_records("odd40", [{"input": f"Is {n} odd?", "target": "yes" if n % 2 else "no"}
                                        for n in range(2, 42)], "classification", labels=("yes", "no"),
                              test_fraction=0.4, instruction="Q: {input}\nAnswer yes or no.")
    owner = {tuple(p + a): name for t, name in ((task, 0), (other, 1))
             for p, a in _encode_items(model, [(t, ex) for ex in P.dev_split(t, PROTOCOL.dev_size).train])}
    step_tasks, real = [], losses.answer_loss

    def spy(m, batch, **kw):
        step_tasks.append({owner[tuple(i for i, k in zip(r, keep, strict=True) if k)]
                           for r, keep in zip(batch.input_ids.tolist(), batch.attention_mask.tolist(), strict=True)})
        return real(m, batch, **kw)

    monkeypatch.setattr(losses, "answer_loss", spy)
    protocol = replace(PROTOCOL, patience=99, task_batches=True)
    curve = P.train_to_convergence(model, [task, other], protocol, lr=1e-3, neurons=_neurons(model))
    assert curve.steps == protocol.max_steps and all(math.isfinite(v) for v in curve.train_loss)
    assert step_tasks == [{s % 2} for s in range(protocol.max_steps)]  # one task per step, in turn
    assert P.Protocol(task_batches=True).run_settings() != P.Protocol().run_settings()  # a different cache key


# ---------------------------------------------------------------- stopping rule


@pytest.mark.parametrize(("losses_", "patience", "min_delta", "stop"), [
    ([5.0], 1, 0.0, False),
    ([5.0, 4.0], 1, 0.0, False),
    ([5.0, 4.0, 4.0], 1, 0.0, True),  # equal is not better
    ([5.0, 4.0, 4.5, 4.2], 2, 0.0, True),
    ([5.0, 4.0, 4.5, 3.9], 2, 0.0, False),
    ([5.0, 4.0, 4.5, 3.9], 2, 0.2, True),  # 3.9 is not 0.2 below 4.0
    ([5.0, math.nan, math.nan], 2, 0.0, True),  # NaN never improves
    ([math.nan, 5.0], 1, 0.0, False),
])
def test_should_stop(losses_, patience, min_delta, stop):
    assert P.should_stop(losses_, patience, min_delta) is stop


def test_best_evaluation_and_choose_lr():
    assert P.best_evaluation([3.0, 2.0, 2.0, math.nan, 2.5]) == 1
    assert P.choose_lr({1e-4: 2.0, 1e-3: 1.5, 1e-2: math.nan}) == 1e-3
    assert P.choose_lr({1e-4: 1.5, 1e-3: 1.5}) == 1e-4  # ties: the first grid value


def test_early_stopping_restores_the_best_weights(model, task, monkeypatch):
    """A hand-crafted dev-loss sequence: best at the 2nd evaluation after step 0 (step 4), no
    improvement for 2 evaluations after it: stops at step 8 and holds the weights of step 4."""
    protocol = replace(PROTOCOL, max_steps=20)
    sequence = iter([9.0, 8.0, 7.0, 7.5, 7.0])  # steps 0, 2, 4, 6, 8
    monkeypatch.setattr(P, "dev_loss", lambda m, dev: next(sequence))
    start, neurons = _params(model), _neurons(model)
    curve = P.train_to_convergence(model, task, protocol, lr=1e-2, neurons=neurons, seed=3)
    assert curve.dev_steps == [0, 2, 4, 6, 8] and curve.stopped == "early" and curve.steps == 8
    assert curve.best_step == 4 and curve.best_dev_loss == 7.0 and len(curve.train_loss) == 8
    got = _params(model)
    # the same 4 steps by hand: the dev-split train examples, finetune's batches for seed 3
    with torch.no_grad():
        for p, s in zip(model.parameters(), start, strict=True):
            p.copy_(s)
    split = P.dev_split(task, protocol.dev_size)
    batches = batch_stream(model, _encode_items(model, [(task, ex) for ex in split.train]), protocol.batch_size, 3)
    with torch.random.fork_rng(), training(model, neurons, lr=1e-2) as trainer:
        assert isinstance(trainer, P.TrainerLike)
        torch.manual_seed(3)
        for _ in range(4):
            trainer.step(next(batches))
    assert all(torch.equal(a, b) for a, b in zip(got, _params(model), strict=True))
    assert attached_hooks(model) == [] and not model.training


def test_a_run_that_never_improves_restores_the_start(model, task, monkeypatch):
    monkeypatch.setattr(P, "dev_loss", lambda m, dev: 1.0)
    start = _params(model)
    curve = P.train_to_convergence(model, task, PROTOCOL, lr=1e-2)  # all parameters
    assert curve.best_step == 0 and curve.stopped == "early" and curve.dev_steps == [0, 2, 4]
    assert all(torch.equal(a, b) for a, b in zip(start, _params(model), strict=True))


# ---------------------------------------------------------------- lr selection, arms, resume


def test_select_lr_picks_the_grid_value_with_the_best_dev_loss(model, task, cache):
    """lr 1e-12 cannot move the weights (its dev loss stays at the start's), 30 moves every trained
    entry by about 30 per step (Adam) and overshoots, 1e-2 learns the yes/no prior: 1e-2 wins."""
    arm = P.Arm("task", "neurons", neurons=_neurons(model))
    got = P.select_lr(model, task, [arm], PROTOCOL)
    scores = got["scores"]
    assert list(scores) == [1e-12, 1e-2, 30.0] and got["lr"] == 1e-2 and got["arm_type"] == "neurons"
    start = got["runs"][0]["curve"]["dev_loss"][0]
    assert scores[1e-12] == pytest.approx(start, rel=1e-6) and scores[1e-2] < start - 0.5
    assert scores[30.0] > scores[1e-2]


def test_interrupted_arms_resume_without_recomputing_and_give_identical_results(model, task, cache, monkeypatch):
    arms = [P.Arm("task", "neurons", neurons=_neurons(model)), P.Arm("all", "all"),
            P.Arm("random", "neurons", neurons=_neurons(model).random_like(1))]
    protocol = replace(PROTOCOL, lr_grids={"neurons": (1e-2,), "all": (1e-3,)})
    trained, real = [], P.train_to_convergence

    def counting(*args, **kw):
        trained.append(kw.get("neurons"))
        return real(*args, **kw)

    monkeypatch.setattr(P, "train_to_convergence", counting)

    def measure(m):
        if interrupt and len(trained) == 2:
            raise KeyboardInterrupt  # the run is killed during the second arm
        return {"test_loss": P.dev_loss(m, [P._dev_batches(m, P.dev_split(task, 4), 4)])}

    kw = {"measure": measure, "measure_settings": {"what": "dev loss"}}
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        P.run_protocol(model, task, arms, protocol, seeds=(0,), **kw)
    assert len(trained) == 2 and attached_hooks(model) == []
    interrupt, trained[:] = False, []
    resumed = P.run_protocol(model, task, arms, protocol, seeds=(0,), **kw)
    assert len(trained) == 2  # the first arm came from the cache
    trained[:] = []
    again = P.run_protocol(model, task, arms, protocol, seeds=(0,), **kw)
    assert trained == [] and again == resumed
    with monkeypatch.context() as m:
        m.setenv("NRN_NO_CACHE", "1")
        fresh = P.run_protocol(model, task, arms, protocol, seeds=(0,), **kw)
    strip = lambda runs: [{**r, "curve": {**r["curve"], "wall_s": 0}} for r in runs["runs"]]  # noqa: E731
    assert strip(fresh) == strip(resumed)
    assert [r["lr"] for r in resumed["runs"]] == [1e-2, 1e-3, 1e-2]


def test_training_is_deterministic_by_seed(model, task):
    start, runs = _params(model), {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        with torch.no_grad():
            for p, s in zip(model.parameters(), start, strict=True):
                p.copy_(s)
        curve = P.train_to_convergence(model, task, replace(PROTOCOL, patience=99), lr=1e-3, seed=seed)
        runs[name] = (curve.train_loss, curve.dev_loss, _params(model))
    assert runs["a"][:2] == runs["b"][:2] and runs["a"][:2] != runs["c"][:2]
    assert all(torch.equal(x, y) for x, y in zip(runs["a"][2], runs["b"][2], strict=True))


# ---------------------------------------------------------------- settings and curves


def test_protocol_from_every_profile():
    for profile in PROFILES.values():
        protocol = P.Protocol.from_profile(profile)
        assert protocol.batch_size == profile.finetune_batch_size and protocol.max_steps == profile.max_steps
        assert set(P.ARM_TYPES) <= set(protocol.lr_grids) and protocol.eval_every <= protocol.max_steps
    with pytest.raises(ValueError, match="no lr grid for arm type 'adapter'"):
        PROTOCOL.grid("adapter")
    with pytest.raises(ValueError, match="patience must be an int >= 1"):
        P.Protocol(patience=0)
    with pytest.raises(ValueError, match="needs a NeuronSet"):
        P.Arm("task", "neurons")
    with pytest.raises(ValueError, match="needs a trainer"):
        P.Arm("lora", "lora")


def test_curves_frame_and_figure():
    run = {"arm": "task", "arm_type": "neurons", "lr": 1e-3, "seed": 0,
           "curve": {"train_loss": [3.0, 2.5, 2.0, 1.9], "dev_steps": [0, 2, 4], "dev_loss": [3.1, 2.4, 2.6],
                     "best_step": 2}}
    frame = P.curves_frame([run])
    assert len(frame) == 7 and frame[frame.best].step.tolist() == [2]


def test_loss_curves_figure_panels_colours_and_dashes():
    """A panel per task, a trace per (arm, seed) holding that run's dev evaluations, by hand."""
    from nrnlib import plots

    def run(arm, seed, losses):
        return {"arm": arm, "arm_type": "neurons", "lr": 1e-3, "seed": seed,
                "curve": {"train_loss": [9.0] * 4, "dev_steps": [0, 2, 4][:len(losses)], "dev_loss": losses,
                          "best_step": 0}}

    runs = [run("task:antonym:global/all", 0, [3.0, 2.0, 2.5]), run("random-total:antonym:global/all", 0, [3.0, 2.8]),
            run("task:antonym:global/all", 1, [3.1, 2.2, 2.1]), run("all:trivia_qa", 0, [4.0, 3.0, 3.5])]
    fig = plots.loss_curves_figure(runs, "curves")
    traces = {(t.legendgroup, t.xaxis): list(t.y) for t in fig.data}
    assert len(fig.data) == 4 and len({t.xaxis for t in fig.data}) == 2
    assert [3.0, 2.8] in traces.values() and [4.0, 3.0, 3.5] in traces.values()
    assert {t.legendgroup for t in fig.data} == {"task, 0", "random-total, 0", "task, 1", "all, 0"}
