"""Every cache kind's key holds every task input its value depends on: changing a task's instruction,
labels, training examples or demonstrations changes the key of every experiment that uses them (and
the store recomputes on a changed key: tests/unit/test_store.py)."""

from dataclasses import replace

import pytest

from nrnlib import experiments as E
from nrnlib import store
from nrnlib.attribution import activation_scores, attribute
from nrnlib.neurons import NeuronSet
from nrnlib.profiles import get_profile

PROFILE = replace(get_profile("smoke"), n_eval=3, n_eval_conditions=3, n_train=4, finetune_steps=1,
                  finetune_batch_size=2, shots=1)


@pytest.fixture()
def keys(tmp_path, monkeypatch):
    """The ``tasks`` part of every key built while the test runs, in order."""
    monkeypatch.setenv("NRN_CACHE", str(tmp_path))
    seen = []
    real = store.make_key

    def spy(*args, **kwargs):
        key = real(*args, **kwargs)
        seen.append(key["tasks"])
        return key

    monkeypatch.setattr(store, "make_key", spy)
    return seen


def _variants(task):
    """The task and one variant per task input. "demonstrations" edits only the train examples past
    those any run here trains or attributes on (the first ``PROFILE.n_train``), among them the
    1-shot demonstration."""
    from nrnlib.evaluate import few_shot_examples

    first = dict(task.train[0])
    [demo] = few_shot_examples(task, 1, seed=0)
    assert task.train.index(demo) >= PROFILE.n_train, "the demonstration must lie past the trained examples"
    edited_tail = tuple({**ex, "input": ex["input"] + " (demo)"} for ex in task.train[PROFILE.n_train:])
    return {
        "base": task,
        "instruction": replace(task, instruction=task.instruction + " Please answer."),
        "labels": replace(task, labels=(*task.labels, "maybe")),
        "train examples": replace(task, train=({**first, "input": first["input"] + "?"}, *task.train[1:])),
        "demonstrations": replace(task, train=task.train[: PROFILE.n_train] + edited_tail),
    }


def _neurons(model):
    return NeuronSet.from_indices(model.cfg.n_layers, model.cfg.d_mlp, {0: [1, 2, 3]})


RUNS = {
    # kind: (run(model, task), the task inputs its value depends on)
    "attribution": (lambda m, t: attribute(m, t, n_examples=2, progress=False),
                    {"instruction", "labels", "train examples"}),
    "activation": (lambda m, t: activation_scores(m, t, n_examples=2, progress=False),
                   {"instruction", "labels", "train examples"}),
    "suite_scores (1-shot)": (lambda m, t: E.score_task(m, t, PROFILE, shots=1), {"instruction", "labels",
                                                                                    "demonstrations"}),
    "suite_scores (0-shot)": (lambda m, t: E.score_task(m, t, PROFILE, shots=0), {"instruction", "labels"}),
    "deactivation": (lambda m, t: E.score_condition(m, t, _neurons(m), n=3), {"instruction", "labels"}),
}


@pytest.mark.parametrize("kind", list(RUNS))
def test_each_task_input_changes_the_key(kind, tiny_model, parity_task, keys):
    run, depends_on = RUNS[kind]
    digests = {}
    for name, variant in _variants(parity_task).items():
        keys.clear()
        run(tiny_model, variant)
        digests[name] = keys[-1]
    for name in ("instruction", "labels", "train examples", "demonstrations"):
        changed = digests[name] != digests["base"]
        assert changed == (name in depends_on), f"{kind}: changing {name}: key changed = {changed}"


def test_mossa_states_key_holds_train_and_read_tasks(tiny_model, parity_task, keys, monkeypatch):
    """Keys of (base, E, control): the instruction and labels enter all three; the training examples
    only the two trained models; train examples past ``n_train`` none."""
    import nrnlib.experiments.layer_by_layer as lbl

    expected = {"instruction": [True, True, True], "labels": [True, True, True],
                "train examples": [False, True, True], "demonstrations": [False, False, False]}
    for name, variant in _variants(parity_task).items():
        monkeypatch.setattr(lbl, "get_task", lambda _name, v=variant: v)
        keys.clear()
        lbl.mossa_states(tiny_model, PROFILE, ["parity"], ["parity"], lr=1e-3)
        if name == "base":
            base = list(keys)
        else:
            assert [k != b for k, b in zip(keys, base, strict=True)] == expected[name], name
