"""Tasks: instruction templates with disjoint train/test examples, a registry of twelve built-in tasks
built offline from text shipped in packages (and WordNet 3.0), and loaders for Hugging Face datasets.

Two-line user path::

    task = Task.from_records("my_task", [{"input": ..., "target": ...}, ...], "classification",
                             labels=("yes", "no"),
                             instruction="Question: {input}\\n\\nAnswer with one word: yes or no.")

Built-in tasks (``list_tasks()``; six per category, three ``role="train"`` and three ``role="heldout"``,
as in Leng & Xiong's in-domain / out-of-domain split) are built lazily by ``get_task(name, seed)`` and
memoized per (name, seed). Every split is deterministic for a seed; train and test never share an input,
and no held-out task shares examples with a training task (the BBC and WordNet tasks draw from
seed-decided disjoint pools of articles / synsets).

Modules: :mod:`~nrnlib.tasks.task` (the :class:`Task` type), :mod:`~nrnlib.tasks.splits` (deterministic
splitting), :mod:`~nrnlib.tasks.builtin` (the twelve tasks), :mod:`~nrnlib.tasks.registry`
(:func:`get_task`, :func:`as_task`, ...), :mod:`~nrnlib.tasks.hub` (Hugging Face datasets) and
:mod:`~nrnlib.tasks.sources` (readers of the packaged text).
"""

from nrnlib.tasks.builtin import HELDOUT_TASKS, TRAIN_TASKS
from nrnlib.tasks.hub import HF_TASKS, HFSpec, load_hf_task
from nrnlib.tasks.registry import _REGISTRY as _REGISTRY  # for introspection (tests read it)
from nrnlib.tasks.registry import as_task, get_task, list_tasks, register_task, unregister_task
from nrnlib.tasks.splits import MAX_TEST, MAX_TRAIN
from nrnlib.tasks.task import CATEGORIES, ROLES, Task, TaskError, check_label_tokens

__all__ = [
    "CATEGORIES",
    "ROLES",
    "Task",
    "TaskError",
    "as_task",
    "check_label_tokens",
    "get_task",
    "list_tasks",
    "register_task",
    "unregister_task",
    "TRAIN_TASKS",
    "HELDOUT_TASKS",
    "HF_TASKS",
    "HFSpec",
    "load_hf_task",
    "MAX_TEST",
    "MAX_TRAIN",
]
