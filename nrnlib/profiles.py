"""Named run sizes. ``smoke``: CI, every notebook in a few minutes on 2 CPU cores; ``standard``: the
figures on a laptop CPU; ``full``: paper scale on one GPU. Chosen by ``$NRN_PROFILE`` (default
``full`` when CUDA is available, else ``standard``) or a notebook's parameters cell."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from nrnlib.tasks import Task

N_CHUNKS = 8  # attribution chunks per task (notebook 01: two disjoint halves of N_CHUNKS / 2 chunks each)
MIN_TEST = 4  # fewest test examples a task needs under any profile


@dataclass(frozen=True)
class Profile:
    name: str
    n_eval: int  # test examples per task
    n_attribution: int  # examples per task for gradient attribution
    n_train: int  # training examples per task for fine-tuning
    finetune_steps: int
    seeds: tuple[int, ...]
    batch_size: int
    shots: int  # few-shot demonstrations for the zero/few-shot table
    minutes_cpu: dict[str, float | int]  # expected minutes per notebook (by NN prefix) on 2 CPU cores
    n_eval_conditions: int = 24  # test examples per condition where a table scores many conditions
    k_grid: tuple[float, ...] = (0.02, 0.05, 0.10)  # fractions of neurons for curves over k
    tasks: tuple[str, ...] | None = None  # the tasks of the many-condition notebooks (None: all twelve)
    # notebook 02 (Table 1 over the grid): its tasks (None: ``tasks``) and test examples per condition
    deactivation_tasks: tuple[str, ...] | None = None
    n_deactivation: int = 24
    # notebook 01's attribution-vs-ablation check: its tasks (None: notebook 02's) and neurons drawn per task
    ablation_tasks: tuple[str, ...] | None = None
    n_ablation_neurons: int = 50
    # notebook 04 (Figure 2): its tasks (None: ``tasks``; the training tasks of each category are those with
    # role "train"), the proportions of the joint sweep, those of individual training, and test examples per task
    generalization_tasks: tuple[str, ...] | None = None
    proportions: tuple[float, ...] = (0.01, 0.05, 0.10, 0.30, 0.50, 0.70, 1.0)
    individual_proportions: tuple[float, ...] = (0.10, 0.50, 1.0)
    n_generalization_eval: int = 24
    # the seeds of the joint sweep and of individual training (None: ``seeds``; individual: the sweep's)
    # and the protocol's step cap and dev examples per task for notebook 04's runs (None: max_steps, dev_size)
    generalization_seeds: tuple[int, ...] | None = None
    individual_seeds: tuple[int, ...] | None = None
    generalization_max_steps: int | None = None
    generalization_dev_size: int | None = None
    # notebook 06 (NCFT, Table 3): the tasks of the sequence (the second order is the reverse), the methods
    # (``experiments.NCFT_METHODS``), test examples per task, and the protocol's step cap and dev examples
    # for its stages (None: max_steps / dev_size)
    ncft_tasks: tuple[str, ...] = ("word_polarity", "question_topic", "antonym", "reverse_dictionary")
    ncft_methods: tuple[str, ...] = ("seqft", "ncft", "ncft_original", "random", "w_ncft", "w_ncft_graded",
                                     "replay", "lora")
    n_ncft_eval: int = 24
    ncft_max_steps: int | None = None
    ncft_dev_size: int | None = None
    # notebook 03 (Table 2 on the protocol): its tasks (None: ``tasks``), test examples per arm, whether it
    # runs the whole grid of cells and random controls (else the paper's cell and control only), and the
    # seeds of the "all parameters" reference arm (None: the first seed)
    finetune_tasks: tuple[str, ...] | None = None
    n_finetune_eval: int = 24
    finetune_grid: bool = False
    all_arm_seeds: tuple[int, ...] | None = None
    finetune_batch_size: int = 8  # examples per fine-tuning step
    # the training protocol (nrnlib.protocol): dev examples per task carved from its train split, steps
    # between dev-loss evaluations, evaluations without improvement before stopping, step cap, and the
    # learning rates tried per arm type ("neurons", "all", "lora")
    dev_size: int = 32
    eval_every: int = 10
    patience: int = 3
    max_steps: int = 300
    lr_grids: dict[str, tuple[float, ...]] = field(default_factory=lambda: {
        "neurons": (3e-4, 1e-3, 3e-3), "all": (1e-5, 3e-5, 1e-4), "lora": (1e-4, 3e-4, 1e-3)})
    # notebook 07 (Paper B on its protocol: LoRA on q, v): the tasks E is trained on (None: every task of role
    # "train") and the held-out tasks sharing no label with them; training examples per task and test prompts
    # read per task (None: n_eval); LoRA learning rate, epochs (the cap when notebook 07 trains to convergence on
    # the dev loss) and examples per step (Paper B: 5e-5, 3, 16);
    # the tasks that get a ceiling (a second control, seed + 1) and the tasks whose controls read each other's
    # prompts (cross-task controls); None: every task
    lbl_seen: tuple[str, ...] | None = None
    lbl_unseen: tuple[str, ...] = ("question_topic", "wordnet_category", "antonym", "hypernym")
    n_lbl_train: int = 1000
    n_lbl_read: int | None = None
    lbl_lora_lr: float = 5e-5
    lbl_lora_epochs: float = 3.0
    lbl_lora_batch_size: int = 16
    lbl_ceiling: tuple[str, ...] | None = None
    lbl_cross: tuple[str, ...] | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def expected_minutes(self, notebook_prefixes: list[str]) -> float | None:
        """Expected CPU minutes for these notebooks (None where some were never timed on a CPU)."""
        times = [self.minutes_cpu.get(prefix) for prefix in notebook_prefixes]
        return None if any(t is None for t in times) else float(sum(times))

    def sizes(self, task: Task | str) -> TaskSizes:
        """This profile's sizes for ``task``, clipped to what the task has (see ``TaskSizes``)."""
        return task_sizes(self, task)

    def task_names(self) -> list[str]:
        """The tasks this profile runs: its ``tasks``, or every registered task (the twelve built-in ones
        unless you registered more)."""
        from nrnlib.tasks import list_tasks

        return list(self.tasks) if self.tasks is not None else list_tasks()

    def finetune_task_names(self) -> list[str]:
        """Notebook 03's tasks: ``finetune_tasks``, else ``task_names()``."""
        return list(self.finetune_tasks) if self.finetune_tasks is not None else self.task_names()

    def sweep_seeds(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Notebook 04's seeds: (joint sweep, individual training)."""
        joint = tuple(self.generalization_seeds if self.generalization_seeds is not None else self.seeds)
        return joint, tuple(self.individual_seeds if self.individual_seeds is not None else joint)

    def generalization_task_names(self) -> list[str]:
        """Notebook 04's tasks: ``generalization_tasks``, else ``task_names()``."""
        return list(self.generalization_tasks) if self.generalization_tasks is not None else self.task_names()

    def ablation_task_names(self) -> list[str]:
        """Notebook 01's attribution-vs-ablation tasks: ``ablation_tasks``, else notebook 02's."""
        return list(self.ablation_tasks) if self.ablation_tasks is not None else self.deactivation_task_names()

    def deactivation_task_names(self) -> list[str]:
        """Notebook 02's tasks: ``deactivation_tasks``, else ``task_names()``."""
        return list(self.deactivation_tasks) if self.deactivation_tasks is not None else self.task_names()


# Minutes per notebook on this project's 2-core CPU machine, uncached. smoke: measured under nbval in one
# single-process pytest pass on a busy machine (load about 3), 2026-12-07: 00 54 s, 01 205, 02 128, 03 about 130,
# 04 153, 05 69, 06 355 (its two methods x two orders), 07 89; rounded up. standard: 00 measured
# at 16 min (971 s on one thread with a cold cache, from clean commit 76071e1; 57 min at 068c490); 01 with
# the ablation check and the null model at 41 min (2,479 s on one thread with a cold cache, from clean
# commit 98a5601); 02 over the grid at 49 min (2,943 s on 2 cores from clean commit cac7baa, attribution
# included; 67 min at f7e936f); 03 on the protocol measured at 96 min on 2 cores; 07 on LoRA under the protocol
# (cap 10 epochs) measured end to end at 138 min (8,284 s on 2 cores, its models shared over two
# single-threaded processes, from clean commit 292813f, beside profiling jobs for its first hour; at 6 fixed
# epochs it took 70 min); 05 at 118 min (7,107 s on one
# thread, from clean commit 342dfc3).
_SMOKE_MINUTES = {"00": 1.0, "01": 3.5, "02": 2.2, "03": 2.2, "04": 2.6, "05": 1.2, "06": 6.0, "07": 1.5}
# measured end to end (06 at 138 min from clean commit 80e605f); 04: its 3-seed run's computed work summed, 753
# thread-minutes (62 runs 708) from clean commits f05638a..a28b7d1 with the same code digests, two processes at once
_STANDARD_MINUTES = {"00": 16, "01": 41, "02": 49, "03": 96, "04": 377, "05": 118, "06": 138, "07": 138}

PROFILES = {
    "smoke": Profile("smoke", n_eval=4, n_attribution=8, n_train=32, finetune_steps=3, seeds=(0,),
                     batch_size=8, shots=1, minutes_cpu=_SMOKE_MINUTES, n_eval_conditions=4, k_grid=(0.05, 0.10),
                     # one set of four tasks (two per category, a training and a held-out task each) for every
                     # notebook, so each task's attribution and untrained scores are computed once per CI run
                     tasks=("word_polarity", "question_topic", "reverse_dictionary", "antonym"),
                     finetune_batch_size=1,  # one example per training step (CI time: every protocol run's steps)
                     # 02 under smoke: one task per category (CI time); 01's ablation check keeps three
                     # (its null-model claims need a 3 x 3 overlap matrix)
                     n_deactivation=4, deactivation_tasks=("word_polarity", "antonym"),
                     # 03 under smoke: the neuron arms only ("all parameters" trains in 06's seqft and the unit tests)
                     finetune_tasks=("word_polarity", "antonym"), n_finetune_eval=4, all_arm_seeds=(),
                     ablation_tasks=("word_polarity", "reverse_dictionary", "antonym"), n_ablation_neurons=8,
                     proportions=(0.10, 1.0), individual_proportions=(0.10,), n_generalization_eval=2,
                     # 06 under smoke: the baseline and W-NCFT, two orders (the verdicts pair by order and seed
                     # and need two pairs); NCFT, random, replay and LoRA sequences run in the unit tests on the
                     # tiny model (tests/unit/test_ncft.py). With NCFT too the sequences cell took 271 s in CI.
                     ncft_tasks=("word_polarity", "antonym"), n_ncft_eval=2, ncft_max_steps=1,
                     ncft_methods=("seqft", "w_ncft_graded"),
                     # the protocol at its smallest: dev loss before training and after each of two steps
                     dev_size=2, eval_every=1, patience=1, max_steps=2,
                     lr_grids={"neurons": (1e-3,), "all": (3e-5,), "lora": (3e-4,)},
                     lbl_seen=("word_polarity", "reverse_dictionary"), lbl_unseen=("antonym", "hypernym"),
                     n_lbl_train=2, n_lbl_read=6, lbl_lora_lr=3e-4, lbl_lora_epochs=1.0, lbl_lora_batch_size=2,
                     lbl_ceiling=("word_polarity",), lbl_cross=("word_polarity", "reverse_dictionary")),
    "standard": Profile("standard", n_eval=60, n_attribution=64, n_train=400, finetune_steps=25,
                        seeds=(0, 1, 2), batch_size=16, shots=2, minutes_cpu=_STANDARD_MINUTES, n_eval_conditions=24,
                        k_grid=(0.02, 0.05, 0.10), finetune_batch_size=4, n_deactivation=32,
                        deactivation_tasks=("word_polarity", "tweet_sentiment", "question_topic", "reverse_dictionary",
                                            "antonym", "trivia_qa"),
                        # 01's ablation check: 30 neurons on 4 tasks (about 250 single-neuron passes over 64 examples
                        # for the trained and the null model, about 35 min on 2 cores; 50 neurons on 6 tasks would
                        # take about 90)
                        ablation_tasks=("word_polarity", "tweet_sentiment", "reverse_dictionary", "antonym"),
                        n_ablation_neurons=30,
                        finetune_tasks=("word_polarity", "question_topic", "antonym", "reverse_dictionary"),
                        n_finetune_eval=48,
                        # 06: six methods (the 0/1 W-NCFT and NCFT on the original model's neurons are in full),
                        # 2 orders x 3 seeds x 4 stages = 144 stages, each a budget of at most 30 steps (120
                        # examples; early stopping on 16 dev examples inside it) and 16 test examples per task:
                        # about 136 min of stages by benchmarks/stage_cost.py (80-step stages: about 330)
                        ncft_methods=("seqft", "ncft", "w_ncft_graded", "random", "replay", "lora"),
                        ncft_max_steps=30, ncft_dev_size=16, n_ncft_eval=16,
                        # 04: 7 proportions x 2 categories x 3 seeds of joint training (each scored on all 12
                        # tasks) and 3 proportions x 6 tasks x 1 seed alone, runs capped at 150 steps, 16 dev
                        # examples per task, one task per step (experiments.sweep_protocol)
                        generalization_seeds=(0, 1, 2), individual_seeds=(0,), generalization_max_steps=150,
                        generalization_dev_size=16,
                        dev_size=32, eval_every=10, patience=2, max_steps=200,
                        lr_grids={"neurons": (1e-3, 3e-3), "all": (3e-5,), "lora": (1e-4, 3e-4, 1e-3)},
                        # 07: LoRA lr fixed at 1e-3 (pilot: lower loss after 15 steps than 3e-4 or 1e-4); 80 examples
                        # per task after the dev split, trained to convergence on the dev loss with a cap of 10 epochs
                        # (at 3 and at 6 fixed epochs some losses were still falling), 60 prompts read (n_eval); the
                        # models shared over NRN_WORKERS processes (notebook 07's budget)
                        n_lbl_train=80, lbl_lora_lr=1e-3, lbl_lora_epochs=10.0,
                        lbl_ceiling=("word_polarity", "reverse_dictionary", "antonym", "hypernym"),
                        lbl_cross=("word_polarity", "reverse_dictionary", "trivia_qa", "antonym", "hypernym")),
    "full": Profile("full", n_eval=500, n_attribution=256, n_train=1000, finetune_steps=300,
                    seeds=(0, 1, 2, 3, 4), batch_size=32, shots=2, minutes_cpu={},
                    n_eval_conditions=200, k_grid=(0.005, 0.01, 0.02, 0.05, 0.10), finetune_batch_size=16,
                    n_deactivation=200, n_finetune_eval=200, n_generalization_eval=200, n_ncft_eval=200,
                    finetune_grid=True,
                    all_arm_seeds=(0, 1, 2, 3, 4),
                    dev_size=100, eval_every=25, patience=4, max_steps=3000,
                    lr_grids={"neurons": (1e-4, 3e-4, 1e-3, 3e-3), "all": (3e-6, 1e-5, 3e-5, 1e-4),
                              "lora": (5e-5, 1e-4, 3e-4, 1e-3)},
                    # 07 on Paper B's protocol: lr 5e-5, 3 epochs, up to 1,000 prompts per task, every test prompt
                    # up to n_eval read (200-500 per task), a ceiling and cross-task controls for every task
                    n_lbl_train=1000, n_lbl_read=None, lbl_lora_lr=5e-5, lbl_lora_epochs=3.0, lbl_lora_batch_size=16,
                    lbl_ceiling=None, lbl_cross=None),
}


class ProfileError(ValueError):
    """A profile asks for sizes a task cannot meet; the message names the task, the size and the fix."""


# The sizes each notebook takes from its profile (for ``plan``, the ``reproduce --dry-run`` table).
NOTEBOOK_SIZES = {
    "00": ("n_eval", "shots"),
    "01": ("n_attribution",),
    "02": ("n_deactivation",),
    "03": ("n_train", "n_finetune_eval"),
    "07": ("n_eval",),  # test prompts read (smoke overrides it with n_lbl_read; training size: n_lbl_train)
}


@dataclass(frozen=True)
class TaskSizes:
    """A profile's sizes for one task, clipped to the task's splits.

    - ``n_eval``, ``n_eval_conditions``, ``n_deactivation``, ``n_finetune_eval``: at most the test split;
    - ``n_train``: at most the train split; ``shots``: at most the train split;
    - ``n_attribution``: at most the train split, rounded down to a multiple of ``N_CHUNKS`` so the
      chunks (and notebook 01's two halves) are equal.

    ``clipped`` maps each size that was reduced to ``(asked, used)``.
    """

    task: str
    n_eval: int
    n_eval_conditions: int
    n_deactivation: int
    n_finetune_eval: int
    n_train: int
    n_attribution: int
    shots: int
    clipped: dict[str, tuple[int, int]] = field(default_factory=dict)


def task_sizes(profile: Profile, task: Task | str) -> TaskSizes:
    """Clip ``profile``'s sizes to ``task``; ``ProfileError`` when a task is too small for any run."""
    from nrnlib.tasks import as_task

    task = as_task(task)
    n_train, n_test = len(task.train), len(task.test)
    if n_test < MIN_TEST or n_train < N_CHUNKS:
        raise ProfileError(
            f"task {task.name!r} has {n_train} train and {n_test} test examples; every profile needs at least "
            f"{N_CHUNKS} train (attribution chunks) and {MIN_TEST} test examples: give the task more examples")
    used = {
        "n_eval": min(profile.n_eval, n_test),
        "n_eval_conditions": min(profile.n_eval_conditions, n_test),
        "n_deactivation": min(profile.n_deactivation, n_test),
        "n_finetune_eval": min(profile.n_finetune_eval, n_test),
        "n_train": min(profile.n_train, n_train),
        "n_attribution": min(profile.n_attribution, n_train) // N_CHUNKS * N_CHUNKS,
        "shots": min(profile.shots, n_train),
    }
    clipped = {k: (getattr(profile, k), v) for k, v in used.items() if v != getattr(profile, k)}
    return TaskSizes(task=task.name, clipped=clipped, **used)


def plan(profile: Profile, notebooks: list[str]) -> list[dict]:
    """One row per (notebook, task, size): asked, used, and whether it was clipped. Raises
    ``ProfileError`` (with every offending task) when a task cannot be run under ``profile``."""
    rows, errors = [], []
    for prefix in notebooks:
        for name in profile.task_names():
            try:
                sizes = task_sizes(profile, name)
            except ProfileError as err:
                errors.append(str(err))
                continue
            for size in NOTEBOOK_SIZES.get(prefix, ()):
                used = getattr(sizes, size)
                rows.append({"notebook": prefix, "task": name, "size": size, "asked": getattr(profile, size),
                             "used": used, "clipped": size in sizes.clipped})
    if errors:
        raise ProfileError(f"profile {profile.name!r} cannot run: " + "; ".join(sorted(set(errors))))
    return rows


def default_profile_name() -> str:
    return os.environ.get("NRN_PROFILE") or ("full" if torch.cuda.is_available() else "standard")


def get_profile(name: str | None = None) -> Profile:
    """The profile called ``name``, or ``$NRN_PROFILE``, or the device's default."""
    name = name or default_profile_name()
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"Unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None
