"""The exercise notebook (notebooks/exercises/mechanisms.py): every check fails on its blank and on a
typical wrong answer and passes on the solution; the folded solutions are solutions.py's code; the
notebook runs end to end with the solutions filled in."""

import inspect
import re
import sys
from pathlib import Path

import pytest
import torch

EXERCISES = Path(__file__).resolve().parents[2] / "notebooks" / "exercises"
sys.path.insert(0, str(EXERCISES))

import checks  # noqa: E402
import solutions  # noqa: E402

NAMES = ("grad_x_act", "top_k_mask", "zeroing_hook", "gradient_mask_hook")


def _cells():
    import jupytext

    return jupytext.read(EXERCISES / "mechanisms.py").cells


def _blanks() -> dict:
    namespace: dict = {}
    for cell in _cells():
        if "exercise" in cell.metadata.get("tags", []):
            exec(cell.source, namespace)  # noqa: S102 - our own notebook's blank functions
    return {name: namespace[name] for name in NAMES}


def _run(name, fn, model, task):
    if name == "top_k_mask":
        return checks.check_top_k(fn)
    check = {"grad_x_act": checks.check_grad_x_act, "zeroing_hook": checks.check_zeroing_hook,
             "gradient_mask_hook": checks.check_gradient_mask}[name]
    return check(fn, model, task)


def test_every_exercise_has_a_blank_a_hint_and_its_solution():
    blanks = _blanks()
    sources = [c.source for c in _cells() if c.cell_type == "markdown"]
    folded = [re.search(r"```python\n(.*?)\n```", s, re.S).group(1) for s in sources if "Solution</summary>" in s]
    assert len(folded) == len(NAMES) == sum("Hint</summary>" in s for s in sources)
    for name, code in zip(NAMES, folded, strict=True):
        assert code == inspect.getsource(getattr(solutions, name)).rstrip("\n"), f"{name}: folded solution drifted"
        assert inspect.getdoc(blanks[name]) == inspect.getdoc(getattr(solutions, name))
        with pytest.raises(NotImplementedError):
            blanks[name](*([None] * len(inspect.signature(blanks[name]).parameters)))


@pytest.mark.parametrize("name", NAMES)
def test_check_fails_on_the_blank_and_passes_on_the_solution(name, model, parity_task):
    with pytest.raises((NotImplementedError, AssertionError)):
        _run(name, _blanks()[name], model, parity_task)
    assert _run(name, getattr(solutions, name), model, parity_task)


def _abs_after_sum(model, batch, layer):  # |Σ_b Σ_pos g·a|: the absolute value in the wrong place
    stored = {}

    def keep(activation, hook):
        activation.retain_grad()
        stored["a"] = activation

    with model.hooks(fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", keep)]):
        logits = model(batch.input_ids)
    logprobs = logits[:, :-1].log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    answer = batch.target_mask[:, 1:].float()
    (-(logprobs * answer).sum(1) / answer.sum(1)).sum().backward()
    a = stored["a"]
    return ((a.grad * a).detach() * batch.attention_mask[..., None]).sum((0, 1)).abs()


def _multiplied_mask(mask):
    return lambda grad: grad * mask


def _per_layer_top_k(scores, k):  # k of every layer instead of k of all neurons
    n = max(1, round(k * scores.shape[1]))
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(1, torch.argsort(scores, dim=1, descending=True, stable=True)[:, :n], True)
    return mask


@pytest.mark.parametrize("name, wrong", [("grad_x_act", _abs_after_sum), ("gradient_mask_hook", _multiplied_mask),
                                         ("top_k_mask", _per_layer_top_k)])
def test_check_fails_on_a_typical_wrong_answer(name, wrong, model, parity_task):
    with pytest.raises(AssertionError):
        _run(name, wrong, model, parity_task)


def test_notebook_runs_with_the_solutions_filled_in(tmp_path):
    """What CI promises: the exercise notebook executed top to bottom on the embedded model, each blank
    replaced by its solution."""
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(EXERCISES / "mechanisms.py")
    filled = 0
    for cell in notebook.cells:
        if "exercise" in cell.metadata.get("tags", []):
            name = re.match(r"def (\w+)", cell.source).group(1)
            cell.source = "import torch\n\n" + inspect.getsource(getattr(solutions, name))
            filled += 1
    assert filled == len(NAMES)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(EXERCISES)}}).execute()
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert printed.count("equal") >= 3 and "gradient masked" in printed
