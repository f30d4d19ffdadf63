"""The "show the model" helpers: answers are evaluate's predictions (with neurons off: evaluate's
under deactivate), and the top activations are the largest entries of the hook's activation."""

import pytest
import torch

from nrnlib import encoding
from nrnlib.ablation import deactivate
from nrnlib.evaluate import evaluate
from nrnlib.experiments.answers import answers_by_shots, answers_table, top_activations
from nrnlib.neurons import NeuronSet


def test_answers_are_the_models_predictions(model, parity_task, echo_task):
    for task in (parity_task, echo_task):
        neurons = NeuronSet.from_indices(model.cfg.n_layers, model.cfg.d_mlp, {0: range(model.cfg.d_mlp)})
        table = answers_table(model, task, n=3, neurons=neurons.for_model(model))
        assert list(table.gold) == [task.target(ex) for ex in task.test[:3]]
        assert list(table.answer) == evaluate(model, task, n=3, progress=False).predictions
        with deactivate(model, neurons.for_model(model)):
            off = evaluate(model, task, n=3, progress=False).predictions
        assert list(table.iloc[:, -1]) == off


def test_answers_by_shots_are_the_predictions_with_that_many_demonstrations(model, parity_task):
    table = answers_by_shots(model, parity_task, shots=(0, 2, 0), n=3, batch_size=2)
    assert list(table.columns) == ["input", "gold", "answer, 0-shot", "answer, 2-shot"]
    for shots in (0, 2):
        expected = evaluate(model, parity_task, n=3, shots=shots, progress=False).predictions
        assert list(table[f"answer, {shots}-shot"]) == expected
    for bad in ((), (-1,), (True,)):
        with pytest.raises(ValueError, match="shots"):
            answers_by_shots(model, parity_task, shots=bad)


def test_top_activations_are_the_largest_hook_values(model, parity_task):
    layer, neuron = model.cfg.n_layers - 1, 5
    table = top_activations(model, parity_task, layer, neuron, n_examples=4, top=3, batch_size=3)
    values = []
    for ex in parity_task.train[:4]:  # one example at a time, by hand: no padding at all
        batch = encoding.encode_examples(model, parity_task, [ex])
        _, cache = model.run_with_cache(batch.input_ids)
        values += cache[f"blocks.{layer}.mlp.hook_post"][0, :, neuron].tolist()
    expected = sorted(values, reverse=True)[:3]
    torch.testing.assert_close(torch.tensor(table.activation.tolist()), torch.tensor(expected), rtol=1e-4, atol=1e-5)
    assert len(table) == 3 and table.token.map(len).gt(0).all()
    with pytest.raises(ValueError, match="neuron"):
        top_activations(model, parity_task, layer, model.cfg.d_mlp)


def test_answers_after_training_are_those_of_the_trained_model(model, echo_task, tmp_path, monkeypatch):
    """Each arm's column equals, by hand, train_to_convergence on the same arm, lr and seed then evaluate;
    the untrained column is evaluate on the model as it is, and the model is put back."""
    from nrnlib.experiments.answers import answers_after_training
    from nrnlib.model_state import restored_after
    from nrnlib.protocol import Arm, Protocol, train_to_convergence

    monkeypatch.setenv("NRN_CACHE", str(tmp_path))
    protocol = Protocol(dev_size=2, eval_every=1, patience=1, max_steps=3, batch_size=2, n_train=4, dev_batch_size=2)
    neurons = NeuronSet.from_indices(model.cfg.n_layers, model.cfg.d_mlp, {1: range(8)}).for_model(model)
    arms = {"neurons": (Arm("task:echo", "neurons", neurons=neurons), 0.3), "all": (Arm("all:echo", "all"), 0.05)}
    before = [p.detach().clone() for p in model.parameters()]
    table = answers_after_training(model, echo_task, arms, protocol, seed=1, n=3)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert list(table.untrained) == evaluate(model, echo_task, n=3, progress=False).predictions
    assert list(table.gold) == [echo_task.target(ex) for ex in echo_task.test[:3]]
    for label, (arm, lr) in arms.items():
        with restored_after(model):
            train_to_convergence(model, [echo_task], protocol, lr=lr, neurons=arm.neurons, mode=arm.mode, seed=1)
            expected = evaluate(model, echo_task, n=3, progress=False).predictions
        assert list(table[label]) == expected
