"""``python -m nrnlib scorecard [--check]``: ``REPRODUCTION.md``, one row per claim of both papers.

The rows come from a fixed catalogue (:data:`CATALOGUE`: the claim ids the notebooks write, the
paper's words and number, the notebook and figure that measure it). Each row is filled from
``figures/results/*.json``:

- results schema 2 (``nrnlib.store.save_results``): the claims whose ``id`` is the row's id, with
  their estimate, 95% CI, rule and verdict (``nrnlib.claims``), the profile, and the commits of the
  cache entries behind them (``provenance.entries.commits``). Where one notebook wrote results under
  several profiles, the largest profile (full > standard > smoke) is shown;
- a results file without ``"schema": 2`` (the old engine): "produced by the old engine (no CI);
  re-run pending", with the old verdict text found in its ``claims``/``checks``;
- no results file for the notebook, or no claim with that id: "not yet measured".

Claims that are not in the catalogue (per-task breakdowns) are listed per results file below the
table. The text depends on the results files only (no clock), so ``--check`` can compare it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nrnlib.claims import Claim, format_ci
from nrnlib.store import REPO_ROOT, RESULTS_SCHEMA, results_dir, write_text_atomic

OUTPUT = REPO_ROOT / "REPRODUCTION.md"
PROFILE_RANK = {"full": 3, "standard": 2, "smoke": 1}
PAPERS = {
    "A": "Paper A: Leng & Xiong, *Towards Understanding Multi-Task Learning (Generalization) of LLMs via "
         "Detecting and Exploring Task-Specific Neurons* (COLING 2025)",
    "B": "Paper B: Zhao, Ziser & Cohen, *Layer by Layer: Uncovering Where Multi-Task Learning Happens in "
         "Instruction-Tuned LLMs* (EMNLP 2024)",
    "ours": "Ours: the foundation and the controls this suite adds",
}


@dataclass(frozen=True)
class Entry:
    """One row of the scorecard: the claim id the notebook writes, the paper's statement and number,
    the notebook and figure that measure it, and substrings that find its verdict in old results."""

    id: str
    paper: str
    statement: str
    paper_value: str
    notebook: str
    figure: str
    old: tuple[str, ...] = ()


CATALOGUE: tuple[Entry, ...] = (
    Entry("A.deactivation.ratio", "A",
          "Deactivating a task's top-10% neurons hurts the task far more than deactivating as many random neurons",
          "Table 1: large drops for task neurons, small for random ones (k = 10%; Llama-2-7b, Bloom-7b1)",
          "02_deactivation", "02_table1_grid", ("3x more than random",)),
    Entry("A.finetune.task_vs_random", "A",
          "Fine-tuning only the task's neurons beats fine-tuning as many random neurons",
          "Table 2: remarkable improvements over random neurons on all tasks but one (Amazonfood)",
          "03_neuron_finetuning", "03_table2", ("beats random-neuron",)),
    Entry("A.generalization.id_peak", "A",
          "In-domain performance first rises, then falls, as the proportion of task neurons trained grows "
          "(three tasks trained jointly)",
          "Fig. 2: peak at 70% (classification) and 50% (generation)", "04_generalization_overlap",
          "04_proportion_sweep"),
    Entry("A.generalization.ood_rise", "A",
          "Out-of-domain performance on held-out tasks of the same category rises with the proportion trained",
          "Fig. 2: continuous increase", "04_generalization_overlap", "04_proportion_sweep"),
    Entry("A.generalization.no_cls_to_gen", "A",
          "Training on classification tasks does not generalize to generation tasks",
          "Fig. 2: no generalization observed", "04_generalization_overlap", "04_proportion_sweep"),
    Entry("A.generalization.overlap_ood", "A",
          "The overlap (IoU) of training- and test-task neurons rises with the proportion, as OOD performance does",
          "Fig. 2: overlap 'surges' with the proportion", "04_generalization_overlap", "04_overlap"),
    Entry("A.similarity.layer_correlation", "A",
          "Beyond a certain depth, task-neuron parameters of training and test tasks are similar, and the "
          "similarity correlates with generalization",
          "Fig. 3: high similarity in deeper layers, strongly correlated with performance",
          "05_parameter_similarity", "05_similarity_by_layer"),
    Entry("A.ncft.forgetting", "A",
          "NCFT (train only the current task's neurons) forgets less than sequential full fine-tuning",
          "Table 3: NCFT significantly outperforms the baseline", "06_ncft_continual", "06_table3"),
    Entry("A.ncft.weighted", "A", "W-NCFT, the weighted variant of NCFT, also mitigates forgetting",
          "Table 3", "06_ncft_continual", "06_table3"),
    Entry("B.pretrained.early_similarity", "B",
          "The pre-trained model's representations already match the single-task controls in early layers "
          "(here: the instruct model before extra multi-task LoRA tuning; mean CKA over the early blocks > 0.90)",
          "linear CKA high in layers 1-9 of 32 (Llama-2-7B)", "07_layer_by_layer", "07_layer_by_layer"),
    Entry("B.ranges.transition", "B",
          "Layers fall into shared, transition and refinement ranges; in the transition range the multi-task "
          "model matches every control (here: some block where E is closer to the controls than base, CI over "
          "tasks)", "layers 1-9 shared, 10-15 transition, 16-32 refinement (Llama-2-7B)",
          "07_layer_by_layer", "07_gap", ("seen tasks show transition",)),
    Entry("B.ranges.unseen_no_transition", "B", "For tasks unseen in instruction tuning no transition layers appear",
          "no transition range for unseen tasks", "07_layer_by_layer", "07_gap", ("unseen tasks",)),
    Entry("ours.foundation.above_chance", "ours",
          "After Batch Calibration the model is above chance by at least 0.10 accuracy on at least 4 of the 6 "
          "classification tasks (the suite's precondition)", "-", "00_model_and_tasks", "00_zero_few_shot",
          ("calibrated_accuracy",)),
    Entry("ours.detection.stability", "ours",
          "Task-neuron sets found on two disjoint halves of the data agree more than random sets do "
          "(IoU above k/(2-k))", "-", "01_detect_task_neurons", "01_stability", ("more stable than chance",)),
    Entry("ours.detection.specific_overlap", "ours",
          "Specificity-aware sets overlap less across tasks than the paper's plain top-k sets", "-",
          "01_detect_task_neurons", "01_iou_heatmap", ("overlap less",)),
    Entry("ours.detection.attribution_predicts_ablation", "ours",
          "Attribution ranks neurons as single-neuron ablation does (Spearman's rho above 0.5 between the "
          "relevance and the measured loss change)", "-", "01_detect_task_neurons", "01_attribution_vs_ablation"),
    Entry("ours.null_model.detection.stability", "ours",
          "On a random-init copy of the architecture (null model), sets found on two data halves also agree "
          "more than chance (if so, stability needs no learned features)", "-", "01_detect_task_neurons",
          "01_null_model"),
    Entry("ours.null_model.attribution_predicts_ablation", "ours",
          "On the null model, attribution also ranks neurons as ablation does", "-", "01_detect_task_neurons",
          "01_null_model"),
    Entry("ours.deactivation.own_set_most_harmful", "ours",
          "A task's own set is the most harmful set to deactivate for it (specificity matrix)", "-",
          "02_deactivation", "02_specificity_matrix", ("most harmful",)),
    Entry("ours.null_model.deactivation", "ours",
          "On a random-init copy of the architecture (null model), deactivating its top-10% neurons also hurts "
          "at least 3x more than as many random neurons (if so, the effect needs no learned features)", "-",
          "02_deactivation", "02_null_model"),
    Entry("ours.layer_by_layer.beyond_format", "ours",
          "Where the multi-task model E is closer to a task's control than base is, it is also closer than other "
          "tasks' controls are: what E shares with the control is task-specific, not the answer format", "-",
          "07_layer_by_layer", "07_layer_by_layer"),
)


# --------------------------------------------------------------------------------------------------
# reading results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultsFile:
    """One ``figures/results/*.json``: its name, notebook prefix, profile, commits and claims."""

    name: str
    prefix: str
    schema: int
    profile: str
    commits: tuple[str, ...]
    claims: tuple[Claim, ...]
    old_verdicts: tuple[str, ...]
    errors: tuple[str, ...]


def _short(commit: str) -> str:
    return commit[:7] + ("+dirty" if commit.endswith("+dirty") else "") if commit != "unknown" else commit


def _old_verdict(item: Mapping[str, Any]) -> str:
    """The old engine's verdict on one claim, in words: 'text: holds', 'text: holds on 10 of 12'."""
    text = str(item.get("claim", "?"))
    if item.get("selection"):
        text += f" [{item['selection']}]"
    if "holds_on" in item and "of" in item:
        return f"{text}: holds on {item['holds_on']} of {item['of']}"
    holds = item.get("holds")
    return f"{text}: " + ("holds" if holds is True else "does not hold" if holds is False else "not testable")


def read_results(path: Path) -> ResultsFile:
    """Parse one results file (either schema); unreadable claims become ``errors``, not exceptions."""
    data = json.loads(path.read_text())
    prefix = path.name[:2]
    provenance = data.get("provenance", {}) or {}
    profile = str(provenance.get("profile") or path.stem.rsplit("_", 1)[-1])
    if data.get("schema") == RESULTS_SCHEMA:
        entries = provenance.get("entries", {}) or {}
        commits = entries.get("commits") or [provenance.get("written_by_commit", "unknown")]
        claims, errors = [], []
        for raw in data.get("claims", []):
            try:
                claims.append(Claim.from_dict(raw))
            except ValueError as err:
                errors.append(f"{raw.get('id', '?') if isinstance(raw, Mapping) else '?'}: {err}")
        return ResultsFile(path.stem, prefix, RESULTS_SCHEMA, profile, tuple(_short(c) for c in commits),
                           tuple(claims), (), tuple(errors))
    results = data.get("results", {}) or {}
    old = [_old_verdict(item) for key in ("claims", "checks") for item in results.get(key, []) or []
           if isinstance(item, Mapping)]
    commit = provenance.get("commit", "unknown")
    return ResultsFile(path.stem, prefix, int(data.get("schema") or 1), profile, (_short(commit),), (), tuple(old), ())


def read_all(folder: Path) -> list[ResultsFile]:
    return [read_results(p) for p in sorted(Path(folder).glob("*.json"))]


# --------------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------------


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _ours(claim: Claim) -> str:
    return (f"{format_ci(claim.estimate, claim.ci_low, claim.ci_high)}, rule {claim.direction} {claim.threshold:.4g}"
            f" ({claim.statistic}; {claim.scope}; n = {claim.n} {claim.unit})")


def _verdict(verdict: str) -> str:
    return f"**{verdict}**" if verdict in ("holds", "does not hold") else verdict


def _where(notebook: str, figure: str) -> str:
    return f"`{notebook}`" + (f", [{figure}](figures/{figure}.png)" if figure else "")


def _rank(results: ResultsFile) -> tuple[int, int, str]:
    return (results.schema == RESULTS_SCHEMA, PROFILE_RANK.get(results.profile, 0), results.name)


def entry_rows(entry: Entry, files: Sequence[ResultsFile]) -> list[dict[str, str]]:
    """The rows of one catalogue entry (one per matching claim, else one status row)."""
    base = {"id": f"`{entry.id}`", "claim": entry.statement, "paper": entry.paper_value}
    prefix = entry.notebook[:2]
    mine = sorted((f for f in files if f.prefix == prefix), key=_rank, reverse=True)
    for results in (f for f in mine if f.schema == RESULTS_SCHEMA):
        matching = [c for c in results.claims if c.id == entry.id]
        if matching:
            return [{**base, "ours": _ours(c), "verdict": _verdict(c.verdict), "profile": c.profile,
                     "where": _where(c.notebook, c.figure), "commits": ", ".join(results.commits)}
                    for c in matching]
    old_files = [f for f in mine if f.schema != RESULTS_SCHEMA]
    for results in old_files:
        found = [v for v in results.old_verdicts if any(s.lower() in v.lower() for s in entry.old)]
        if found:
            return [{**base, "ours": "old verdict: " + "; ".join(found),
                     "verdict": "produced by the old engine (no CI); re-run pending", "profile": results.profile,
                     "where": _where(entry.notebook, entry.figure), "commits": ", ".join(results.commits)}]
    note = f" (no verdict on it in `results/{old_files[0].name}.json`)" if old_files else ""
    return [{**base, "ours": "-", "verdict": f"not yet measured (`{entry.notebook}`){note}", "profile": "-",
             "where": _where(entry.notebook, entry.figure), "commits": "-"}]


_COLUMNS = (("id", "id"), ("claim", "claim (paper's words)"), ("paper", "paper's number"),
            ("ours", "ours: estimate [95% CI], rule (statistic; scope; n)"), ("verdict", "verdict"),
            ("profile", "profile"), ("where", "notebook, figure"), ("commits", "commits"))


def _table(rows: Sequence[Mapping[str, str]], columns=_COLUMNS) -> list[str]:
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[key]) for key, _ in columns) + " |" for row in rows]
    return lines


_COUNT_LABELS = {"holds": "hold", "does not hold": "do not hold", "inconclusive": "inconclusive",
                 "not yet measured": "not yet measured", "produced by the old engine": "from the old engine"}


def render(folder: Path | None = None) -> str:
    """The text of ``REPRODUCTION.md`` for the results in ``folder`` (default ``results_dir()``)."""
    files = read_all(Path(folder) if folder is not None else results_dir())
    rows = {paper: [row for e in CATALOGUE if e.paper == paper for row in entry_rows(e, files)] for paper in PAPERS}
    every = [row for paper_rows in rows.values() for row in paper_rows]
    counts = {v: sum(1 for r in every if r["verdict"].strip("*").startswith(v)) for v in
              ("holds", "does not hold", "inconclusive", "not yet measured", "produced by the old engine")}
    lines = [
        "# Reproduction scorecard",
        "",
        "<!-- Generated by `python -m nrnlib scorecard` from `figures/results/*.json`; do not edit by hand. -->",
        "",
        "One row per claim of the two papers and of this suite's own foundation and controls. A verdict is a "
        "rule fixed in code before the run (`nrnlib.claims`): a statistic, its percentile-bootstrap 95% CI "
        "(over test examples, and over seeds where there are several; paired where two arms share "
        "examples or batches), and a threshold. **holds**: the whole CI is past the threshold; "
        "**does not hold**: the whole CI is short of it; otherwise inconclusive. Profiles: `smoke` (CI only, "
        "a handful of examples: its verdicts mean little), `standard` (2 CPU cores), `full` (paper scale, GPU). "
        "Commits are those of the cached computations the numbers rest on (`+dirty`: uncommitted changes).",
        "",
        "Rows: " + ", ".join(f"{n} {_COUNT_LABELS[v]}" for v, n in counts.items()) + ".",
    ]
    for paper, title in PAPERS.items():
        lines += ["", f"## {title}", ""] + _table(rows[paper])
    catalogued = {e.id for e in CATALOGUE}
    detail = [(f, [c for c in f.claims if c.id not in catalogued]) for f in files if f.schema == RESULTS_SCHEMA]
    detail = [(f, extra) for f, extra in detail if extra or f.errors]
    if detail:
        lines += ["", "## Per-task and supporting claims", ""]
    for results, extra in detail:
        lines += ["<details>", f"<summary><code>results/{results.name}.json</code> ({len(extra)} claims; profile "
                  f"{results.profile}; commits {', '.join(results.commits)})</summary>", ""]
        lines += _table([{"id": f"`{c.id}`", "scope": c.scope, "ours": _ours(c), "verdict": _verdict(c.verdict)}
                         for c in extra], (("id", "id"), ("scope", "scope"), ("ours", "estimate [95% CI], rule"),
                                           ("verdict", "verdict")))
        lines += [f"- unreadable claim {_cell(e)}" for e in results.errors]
        lines += ["", "</details>", ""]
    old = [f for f in files if f.schema != RESULTS_SCHEMA]
    if old:
        lines += ["", "## Results still from the old engine (no CI; re-run pending)", ""]
        lines += [f"- `results/{f.name}.json` (commit {', '.join(f.commits)}): " + _cell("; ".join(f.old_verdicts)
                  or "no verdicts recorded") for f in old]
    return "\n".join(lines).rstrip() + "\n"


def main(check: bool = False, output: Path | None = None, folder: Path | None = None) -> int:
    """Write ``output`` (default ``REPRODUCTION.md`` at the repository root); with ``check``, write
    nothing and return 1 when the file differs from what would be written (0 when equal)."""
    output = Path(output) if output is not None else OUTPUT
    text = render(folder)
    if check:
        current = output.read_text() if output.exists() else None
        if current != text:
            print(f"{output} is out of date with the results in {folder or results_dir()}: "
                  f"run `python -m nrnlib scorecard`")
            return 1
        print(f"{output} is up to date")
        return 0
    write_text_atomic(output, text)
    print(f"wrote {output}")
    return 0
