"""nrnlib: task-specific neurons and layer-by-layer CKA on TransformerLens 4.

The main entry points are importable from the package (loaded on first use, so ``import nrnlib``
stays cheap)::

    from nrnlib import load_model, get_task, Task, attribute, select_neurons, deactivate, finetune, evaluate
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_model": "nrnlib.models",
    "get_task": "nrnlib.tasks",
    "list_tasks": "nrnlib.tasks",
    "Task": "nrnlib.tasks",
    "attribute": "nrnlib.attribution",
    "select_neurons": "nrnlib.attribution",
    "select_specific_neurons": "nrnlib.attribution",
    "NeuronSet": "nrnlib.neurons",
    "deactivate": "nrnlib.ablation",
    "finetune": "nrnlib.finetune",
    "evaluate": "nrnlib.evaluate",
    "linear_cka": "nrnlib.representations",
    "last_token_states": "nrnlib.representations",
    "get_profile": "nrnlib.profiles",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nrnlib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
