"""LoRA fine-tuning through ``peft`` on a TransformerBridge: Paper B's training protocol.

Paper B (Zhao, Ziser & Cohen; code ``zsquaredz/layer_by_layer``, LLaMA-Factory ``train_*_model.sh``)
trains its experimental and control models with LoRA on ``q_proj`` and ``v_proj``: rank 8, lr 5e-5,
a cosine schedule without warm-up, 3 epochs, 4 examples per device x 4 accumulation steps = 16 per
update, AdamW, fp16. ``lora_alpha`` and ``lora_dropout`` are not set in those scripts, so they take
the defaults of the LLaMA-Factory copy that repository ships (read from its compiled
``llmtuner/hparams/finetuning_args``: ``lora_rank`` 8, ``lora_alpha`` None meaning ``lora_rank · 2``,
``lora_dropout`` 0.0): ``alpha = 16``, dropout 0; the Hugging Face Trainer's defaults add
gradient-norm clipping at 1.0 and weight decay 0. These are the defaults of :class:`LoraSettings`.

**The adapter.** For a target linear map ``y = W x`` (``W: [out, in]``), LoRA trains
``A: [r, in]`` (Kaiming-uniform init) and ``B: [out, r]`` (zero init) and computes

    y = W x + (α / r) · B A x,

so the model starts exactly at the base model and only ``A``, ``B`` receive gradients.

**On the bridge.** The TransformerBridge wraps each Hugging Face ``nn.Linear`` in a ``LinearBridge``
(``...self_attn._original_component.q_proj._original_component`` is the ``nn.Linear``). ``peft``'s
``inject_adapter_in_model`` is given exactly those inner ``nn.Linear`` names, so it replaces each by a
``peft`` ``lora.Linear`` *inside* the ``LinearBridge``: the bridge's attention still calls
``self.q(hidden)``, so ``hook_q`` / ``blocks.{l}.attn.q.hook_out`` and every other hook fire on the
adapted projection. After training, :func:`train_lora` merges the adapter into the base weights
(``W ← W + (α/r) B A``, the same ``Parameter`` objects, in place) and puts the plain ``nn.Linear``
back: the model is a plain bridge again whose forward equals the adapted one up to float rounding.
Wrap the call in ``model_state.restored_after(model)`` to get the exact original weights back
(a snapshot copy: ``peft``'s own ``unmerge``, ``W − (α/r) B A``, is exact only up to rounding).

**Schedule.** AdamW (β = (0.9, 0.999), ε = 1e-8) at ``lr · f(t)`` for optimizer step ``t = 0..T−1``
with Hugging Face's cosine schedule (``get_cosine_schedule_with_warmup``, half a cycle):

    f(t) = t / w                                        for t < w (warm-up, w = ``warmup_steps``)
    f(t) = max(0, ½ (1 + cos(π (t − w) / max(1, T − w))))   otherwise,

``T = ceil(epochs · ceil(n / batch_size))`` (capped by ``max_steps``) for ``n`` training examples.

**Data and loss** are ``nrnlib.finetune``'s: the union of the tasks' train splits (the first
``n_train`` of each), a seeded permutation per epoch, cycled, and ``losses.answer_loss`` (mean
cross-entropy over the batch's answer tokens).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor, nn
from tqdm.auto import tqdm

from nrnlib import encoding, losses
from nrnlib.checks import check_float, check_int
from nrnlib.finetune import NonFiniteLossError, TrainLog, _encode_items, _order, _training_items
from nrnlib.model_state import unique_parameters
from nrnlib.tasks import as_task

ADAPTER = "default"


class LoraTargetError(ValueError):
    """The model has no linear module with the asked LoRA target name (e.g. GPT-2's fused ``c_attn``
    instead of Llama's ``q_proj`` / ``v_proj``)."""


@dataclass(frozen=True)
class LoraSettings:
    """Paper B's LoRA protocol (see the module docstring for where each default comes from).

    ``batch_size`` examples per optimizer step (Paper B: 4 x 4 accumulation = 16); ``epochs`` passes
    over the training examples (3); ``max_steps`` caps the step count (None: no cap), for CPU
    profiles that cannot afford the full epochs (say so where it is used)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    lr: float = 5e-5
    epochs: float = 3.0
    batch_size: int = 16
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_steps: int | None = None

    def __post_init__(self) -> None:
        where = "LoraSettings"
        check_int(self.r, "r", minimum=1, where=where)
        check_float(self.alpha, "alpha", positive=True, where=where)
        check_float(self.dropout, "dropout", minimum=0.0, where=where)
        check_float(self.lr, "lr", positive=True, where=where)
        check_float(self.epochs, "epochs", positive=True, where=where)
        check_int(self.batch_size, "batch_size", minimum=1, where=where)
        check_int(self.warmup_steps, "warmup_steps", minimum=0, where=where)
        check_float(self.weight_decay, "weight_decay", minimum=0.0, where=where)
        check_float(self.max_grad_norm, "max_grad_norm", positive=True, where=where)
        check_int(self.max_steps, "max_steps", minimum=1, where=where, none_ok=True)
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(f"{where}: targets must be module names such as ('q_proj', 'v_proj'), got "
                             f"{self.targets!r}")
        if self.dropout >= 1:
            raise ValueError(f"{where}: dropout must be below 1, got {self.dropout}")

    @property
    def scaling(self) -> float:
        """``α / r``, the factor of ``B A``."""
        return self.alpha / self.r

    def total_steps(self, n_examples: int) -> int:
        """``T = ceil(epochs · ceil(n / batch_size))``, capped by ``max_steps``."""
        n_examples = check_int(n_examples, "n_examples", minimum=1, where="LoraSettings.total_steps")
        steps = math.ceil(self.epochs * math.ceil(n_examples / self.batch_size))
        return steps if self.max_steps is None else min(steps, self.max_steps)

    def key(self) -> dict:
        """The settings as plain JSON, for cache keys."""
        out = asdict(self)
        out["targets"] = list(self.targets)
        return out


@dataclass
class LoraLog(TrainLog):
    """A :class:`nrnlib.finetune.TrainLog` (loss per step, steps, trained entries, wall time) plus the
    learning rate of every step, the gradient norm before clipping, and the settings."""

    lrs: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    n_examples: int = 0

    @property
    def epochs_seen(self) -> float:
        """Examples drawn / training examples."""
        return self.steps * self.settings.get("batch_size", 0) / self.n_examples if self.n_examples else 0.0


def cosine_factor(step: int, total: int, warmup: int = 0) -> float:
    """The multiplier ``f(t)`` of the learning rate at optimizer step ``t`` (module docstring)."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def _hf(model) -> nn.Module:
    return getattr(model, "original_model", model)


def lora_target_names(model, targets: Sequence[str] = ("q_proj", "v_proj")) -> list[str]:
    """Names (in ``model.original_model``) of the ``nn.Linear`` modules whose Hugging Face name ends
    in one of ``targets`` once the bridge's ``._original_component`` levels are removed."""
    names = []
    for name, module in _hf(model).named_modules():
        if type(module) is not nn.Linear:
            continue
        plain = name.replace("._original_component", "")
        if plain.rsplit(".", 1)[-1] in targets:
            names.append(name)
    return names


def _lora_layers(hf: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in hf.named_modules() if isinstance(m, LoraLayer)]


@contextlib.contextmanager
def lora_adapter(model, settings: LoraSettings = LoraSettings(), seed: int = 0) -> Iterator[list[nn.Module]]:
    """Inject LoRA adapters (``peft``) into ``settings.targets`` of ``model`` for the block; yield the
    ``peft`` LoRA layers. Inside, only the adapters require gradients (A from ``seed``, B = 0, so the
    model's output is unchanged until they are trained). On exit (also after an exception) every
    adapted ``nn.Linear`` is put back in its place, the ``peft_config`` attribute ``peft`` adds is
    removed and the ``requires_grad`` flags restored: the base weights are bit-identical unless a
    layer was merged inside the block (then they hold ``W + (α/r) B A``)."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import cast_adapter_dtype

    hf = _hf(model)
    names = lora_target_names(model, settings.targets)
    if not names:
        raise LoraTargetError(f"no nn.Linear named {list(settings.targets)} in {type(hf).__name__}: LoRA targets "
                              "are module names (Llama: q_proj, v_proj; GPT-2 fuses them in c_attn); pass "
                              "LoraSettings(targets=...)")
    if _lora_layers(hf):
        raise RuntimeError("the model already carries LoRA layers: leave the other lora_adapter block first")
    params = unique_parameters(model)
    flags = [p.requires_grad for p in params]
    had_config = "peft_config" in vars(hf)
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=names, bias="none")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            inject_adapter_in_model(config, hf, adapter_name=ADAPTER)
        cast_adapter_dtype(hf, ADAPTER)  # fp32 adapters on a bf16/fp16 model, as get_peft_model does
        for p in params:
            p.requires_grad_(False)
        yield [m for _, m in _lora_layers(hf)]
    finally:
        for name, layer in _lora_layers(hf):
            parent_name, _, child = name.rpartition(".")
            setattr(hf.get_submodule(parent_name) if parent_name else hf, child, layer.get_base_layer())
        if not had_config:
            vars(hf).pop("peft_config", None)
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
            p.grad = None


def adapter_parameters(layers: Sequence[nn.Module]) -> list[nn.Parameter]:
    """The trainable LoRA parameters (every ``A`` and ``B``) of the given ``peft`` layers."""
    return [p for layer in layers for name, p in layer.named_parameters() if "lora_" in name and p.requires_grad]


def _clip_norm(params: list[nn.Parameter], max_norm: float) -> Float[Tensor, ""]:
    """Global gradient norm ``‖g‖₂`` over ``params``, clipped in place to ``max_norm`` (as the Trainer)."""
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


class LoraTrainer:
    """One LoRA training run in progress (a ``protocol.TrainerLike``): AdamW over the adapters'
    ``A`` and ``B`` (β = (0.9, 0.999), ε = 1e-8), gradient-norm clipping at ``max_grad_norm``.
    ``step`` is forward + backward on ``losses.answer_loss``, a finiteness check before any update,
    clipping, the AdamW step; ``state``/``load_state`` copy the adapters out and back."""

    def __init__(self, model, layers: Sequence[nn.Module], lr: float, weight_decay: float,
                 max_grad_norm: float) -> None:
        self.model, self.params = model, adapter_parameters(layers)
        self.n_trainable_entries = sum(p.numel() for p in self.params)
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
        self.max_grad_norm = max_grad_norm
        self.last_grad_norm = math.nan
        self.steps = 0

    def step(self, batch: encoding.EncodedBatch, total: int | None = None) -> float:
        loss = losses.answer_loss(self.model, batch, share_prefix=True)  # the prompts' common prefix once
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = float(loss.detach())
        if not math.isfinite(value):
            of = f" of {total}" if total is not None else ""
            raise NonFiniteLossError(f"LoRA: the loss at step {self.steps + 1}{of} is {value}; stopped before "
                                     f"training on it. Lower lr (now {self.optimizer.defaults['lr']:g}).")
        self.last_grad_norm = float(_clip_norm(self.params, self.max_grad_norm))
        self.optimizer.step()
        self.steps += 1
        return value

    def state(self) -> list[Tensor]:
        return [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def load_state(self, state: Sequence[Tensor]) -> None:
        for p, saved in zip(self.params, state, strict=True):
            p.copy_(saved)


def _merge(layers: Sequence[nn.Module]) -> None:
    with torch.no_grad():
        for layer in layers:
            layer.merge(adapter_names=[ADAPTER])


def lora_training(settings: LoraSettings = LoraSettings(), seed: int = 0):  # noqa: ANN201 - a factory
    """A ``protocol.train_to_convergence`` trainer factory: a fresh adapter (``settings``' targets,
    rank, alpha, dropout; A drawn from ``seed``) trained at a constant lr (the protocol's, not
    ``settings.lr``: a run's length is not known in advance, so there is no cosine schedule) and
    merged into the base weights when the block ends without an error (sequential LoRA in notebook
    06: each stage's adapter becomes part of the next stage's base)."""

    @contextlib.contextmanager
    def factory(model, lr: float, weight_decay: float) -> Iterator[LoraTrainer]:
        with lora_adapter(model, settings, seed) as layers:
            trainer = LoraTrainer(model, layers, lr, weight_decay, settings.max_grad_norm)
            model.train()
            try:
                yield trainer
            finally:
                model.eval()
                trainer.optimizer.zero_grad(set_to_none=True)
            _merge(layers)

    return factory


def train_lora(
    model,
    tasks,
    settings: LoraSettings = LoraSettings(),
    seed: int = 0,
    n_train: int | None = None,
    progress: bool = True,
) -> LoraLog:
    """Train LoRA adapters on ``tasks`` (a task, a name, or a list) with ``settings`` and merge them into
    ``model``'s weights in place; return the log. Call it inside ``restored_after(model)`` to get the
    exact base weights back afterwards.

    ``seed`` draws the adapters' A matrices and the order of the examples; ``n_train`` takes the first
    ``n_train`` train examples of each task. A non-finite loss stops training (``FloatingPointError``)
    before that step's update; the adapters are then removed unmerged, so the model is unchanged.
    """
    tasks = [as_task(t) for t in tasks] if isinstance(tasks, (list, tuple)) else [as_task(tasks)]
    if not tasks:
        raise ValueError("train_lora needs at least one task")
    seed = check_int(seed, "seed", where="train_lora")
    n_train = check_int(n_train, "n_train", minimum=1, where="train_lora", none_ok=True)
    encoded = _encode_items(model, _training_items(tasks, n_train))
    total = settings.total_steps(len(encoded))
    pad = encoding.pad_id(model.tokenizer)
    device = next(iter(model.parameters())).device
    order = _order(len(encoded), seed)
    log = LoraLog(settings=settings.key(), n_examples=len(encoded))
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # LoRA dropout, where it is not 0
        with lora_adapter(model, settings, seed) as layers:
            trainer = LoraTrainer(model, layers, settings.lr, settings.weight_decay, settings.max_grad_norm)
            log.n_trainable_entries = trainer.n_trainable_entries
            schedule = torch.optim.lr_scheduler.LambdaLR(
                trainer.optimizer, lambda t: cosine_factor(t, total, settings.warmup_steps))
            model.train()
            try:
                for _ in tqdm(range(total), desc="lora", disable=not progress, leave=False):
                    chosen = [encoded[next(order)] for _ in range(settings.batch_size)]
                    batch = encoding.pad_batch([c[0] for c in chosen], [c[1] for c in chosen], pad).to(device)
                    lr_now = float(trainer.optimizer.param_groups[0]["lr"])
                    log.losses.append(trainer.step(batch, total=total))
                    log.grad_norms.append(trainer.last_grad_norm)
                    log.lrs.append(lr_now)
                    schedule.step()
                    log.steps += 1
            finally:
                model.eval()
                trainer.optimizer.zero_grad(set_to_none=True)
            _merge(layers)
    log.wall_s = time.perf_counter() - start
    return log
