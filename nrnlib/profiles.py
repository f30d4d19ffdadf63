"""Named run sizes. ``smoke``: CI, every notebook in a few minutes on 2 CPU cores; ``standard``: the
figures on a laptop CPU; ``full``: paper scale on one GPU. Chosen by ``$NRN_PROFILE`` (default
``full`` when CUDA is available, else ``standard``) or a notebook's parameters cell."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch


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
    minutes_cpu: dict[str, float]  # expected minutes per notebook (by NN prefix) on 2 CPU cores
    n_eval_conditions: int = 24  # test examples per condition where a table scores many conditions
    k_grid: tuple[float, ...] = (0.02, 0.05, 0.10)  # fractions of neurons for curves over k
    tasks: tuple[str, ...] | None = None  # the tasks of the many-condition notebooks (None: all twelve)
    finetune_batch_size: int = 8  # examples per fine-tuning step

    def as_dict(self) -> dict:
        return asdict(self)

    def expected_minutes(self, notebook_prefixes: list[str]) -> float | None:
        """Expected CPU minutes for these notebooks (None where some were never timed on a CPU)."""
        times = [self.minutes_cpu.get(prefix) for prefix in notebook_prefixes]
        return None if any(t is None for t in times) else float(sum(times))

    def task_names(self) -> list[str]:
        """The tasks this profile runs: its ``tasks``, or every registered task (the twelve built-in ones
        unless you registered more)."""
        from nrnlib.tasks import list_tasks

        return list(self.tasks) if self.tasks is not None else list_tasks()


# Minutes per notebook on this project's 2-core CPU machine, uncached: smoke and standard 00/01 measured;
# standard 02 measured (516 conditions, 11.5 s each on average, 5,945 s of scoring); 03 measured (96 arms,
# 90 trained 25 steps: 12,498 s of training summed, plus scoring); 07 measured.
_SMOKE_MINUTES = {"00": 1.5, "01": 1.2, "02": 2.3, "03": 1.7, "07": 1.5}
_STANDARD_MINUTES = {"00": 48, "01": 19, "02": 100, "03": 215, "07": 60}

PROFILES = {
    "smoke": Profile("smoke", n_eval=4, n_attribution=8, n_train=32, finetune_steps=3, seeds=(0,),
                     batch_size=8, shots=1, minutes_cpu=_SMOKE_MINUTES, n_eval_conditions=4, k_grid=(0.05, 0.10),
                     tasks=("word_polarity", "tweet_sentiment", "antonym", "hypernym"), finetune_batch_size=2),
    "standard": Profile("standard", n_eval=60, n_attribution=64, n_train=400, finetune_steps=25,
                        seeds=(0, 1, 2), batch_size=16, shots=2, minutes_cpu=_STANDARD_MINUTES, n_eval_conditions=24,
                        k_grid=(0.02, 0.05, 0.10), finetune_batch_size=4),
    "full": Profile("full", n_eval=500, n_attribution=256, n_train=1000, finetune_steps=300,
                    seeds=(0, 1, 2, 3, 4), batch_size=32, shots=2, minutes_cpu={},
                    n_eval_conditions=200, k_grid=(0.005, 0.01, 0.02, 0.05, 0.10), finetune_batch_size=16),
}


def default_profile_name() -> str:
    return os.environ.get("NRN_PROFILE") or ("full" if torch.cuda.is_available() else "standard")


def get_profile(name: str | None = None) -> Profile:
    """The profile called ``name``, or ``$NRN_PROFILE``, or the device's default."""
    name = name or default_profile_name()
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"Unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None
