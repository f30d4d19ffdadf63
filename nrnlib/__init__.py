"""nrnlib: task-specific neurons and layer-by-layer CKA on TransformerLens 4.

The main entry points are importable from the package::

    from nrnlib import load_model, get_task, Task, attribute, select_neurons, deactivate, finetune, evaluate

(``nrnlib.evaluate`` and ``nrnlib.finetune`` are these functions; their modules are
``sys.modules["nrnlib.evaluate"]`` / ``"nrnlib.finetune"``, reachable with ``from nrnlib.evaluate import ...``.)
"""

from nrnlib.ablation import deactivate
from nrnlib.attribution import attribute
from nrnlib.evaluate import evaluate
from nrnlib.finetune import finetune
from nrnlib.models import load_model
from nrnlib.neurons import NeuronSet
from nrnlib.profiles import get_profile
from nrnlib.representations import last_token_states, linear_cka
from nrnlib.selection import select_neurons, select_specific_neurons
from nrnlib.tasks import Task, get_task, list_tasks

__all__ = [
    "NeuronSet",
    "Task",
    "attribute",
    "deactivate",
    "evaluate",
    "finetune",
    "get_profile",
    "get_task",
    "last_token_states",
    "linear_cka",
    "list_tasks",
    "load_model",
    "select_neurons",
    "select_specific_neurons",
]
