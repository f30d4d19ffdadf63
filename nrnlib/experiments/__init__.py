"""The code each notebook calls: one function per table or figure, taking a ``Profile`` and returning
a tidy pandas DataFrame (or a dict of tensors / NeuronSets). Every per-task item is cached on disk
(keyed by the model's weights, the task's examples and the settings), so an interrupted run resumes
where it stopped and a rerun is instant.

- ``suite``: notebook 00 (the task suite, zero/few-shot scores);
- ``detection``: notebook 01 (relevance scores, task-neuron sets, depth, overlap, stability);
- ``attribution_vs_ablation``: notebook 01 (does relevance predict the loss change of zeroing one neuron?);
- ``deactivation``: notebook 02 (Paper A Table 1);
- ``neuron_finetuning``: notebook 03 (Paper A Table 2);
- ``layer_by_layer``: notebook 07 (Paper B, CKA against single-task controls);
- ``conditions``: one scored deactivation condition (notebook 02's cached unit of work);
- ``measures``: the test measurement of every trained arm of notebooks 03-06 (its code keys their cache);
- ``verdicts``: the claims of notebooks 00, 01 and 02 (kept out of the modules that key the cache);
- ``layer_verdicts``: the claims of notebook 07 (likewise).
"""

from nrnlib.experiments.answers import (
    AnswerMeasure,
    answers_after_training,
    answers_by_shots,
    answers_table,
    table2_answers,
    top_activations,
)
from nrnlib.experiments.attribution_vs_ablation import AblationCheck, ablation_check, ablation_check_table, draw_neurons
from nrnlib.experiments.conditions import score_condition
from nrnlib.experiments.deactivation import (
    GRID,
    PAPER_CELL,
    PAPER_CONTROL,
    Cell,
    diagonal_dominance,
    drop_summary,
    drops_per_example,
    grid_sets,
    k_curve_table,
    mode_agreement,
    specificity_matrix,
    table1_grid,
)
from nrnlib.experiments.detection import (
    depth_table,
    iou_table,
    mean_off_diagonal,
    neuron_sets,
    relevance_chunks,
    relevance_scores,
    stability_table,
)
from nrnlib.experiments.generalization import (
    Sweep,
    curve_cis,
    curve_summary,
    dev_curves,
    overlap_table,
    proportion_sets,
    proportion_sweep,
    sweep_protocol,
    training_union,
)
from nrnlib.experiments.layer_by_layer import (
    UNSEEN,
    base_states,
    check_unseen,
    cka_curves,
    lbl_lora,
    lbl_n_read,
    lbl_plan,
    lbl_tasks,
    mossa_states,
    primary_estimator,
)
from nrnlib.experiments.layer_verdicts import (
    beyond_format_claim,
    early_similarity_claim,
    layer_claims,
    transition_claims,
)
from nrnlib.experiments.lbl_training import (
    convergence_table,
    cosine_lora_training,
    lora_runs,
    loss_summary,
    loss_table,
    train_lora_to_convergence,
)
from nrnlib.experiments.measures import TasksMeasure, TestMeasure, measure_untrained
from nrnlib.experiments.ncft import METHODS as NCFT_METHODS
from nrnlib.experiments.ncft import (
    joint_reference,
    run_sequence,
    run_sequences,
    select_learning_rates,
    stage_neurons,
)
from nrnlib.experiments.ncft_results import (
    joint_performance,
    metrics_table,
    ncft_claims,
    ncft_learning_rates,
    performance_matrix,
    sequence_metrics,
)
from nrnlib.experiments.neuron_finetuning import Table2, arm_summary, neuron_arms, paired_per_example, table2
from nrnlib.experiments.parameter_similarity import (
    Figure3,
    SimilarityMeasure,
    layer_correlations,
    similarity_by_layer,
    similarity_models,
)
from nrnlib.experiments.ranges import (
    TAU_GRID,
    cka_gap,
    gap_ranges,
    layer_ranges,
    mean_curves,
    paper_b_ranges,
    range_sweep,
    ranges_as_depth,
)
from nrnlib.experiments.suite import score_task, task_suite_table, zero_and_few_shot_table
from nrnlib.experiments.verdicts import (
    ablation_claims,
    deactivation_claims,
    detection_claims,
    finetuning_claims,
    finetuning_seed_points,
    generalization_claims,
    similarity_claims,
    specificity_claims,
    suite_claims,
)

__all__ = [
    "AnswerMeasure",
    "answers_after_training",
    "answers_by_shots",
    "answers_table",
    "table2_answers",
    "top_activations",
    "AblationCheck",
    "TAU_GRID",
    "UNSEEN",
    "beyond_format_claim",
    "check_unseen",
    "early_similarity_claim",
    "layer_claims",
    "lbl_lora",
    "lbl_n_read",
    "lbl_plan",
    "lbl_tasks",
    "convergence_table",
    "cosine_lora_training",
    "lora_runs",
    "loss_summary",
    "loss_table",
    "train_lora_to_convergence",
    "transition_claims",
    "ablation_check",
    "ablation_check_table",
    "base_states",
    "draw_neurons",
    "gap_ranges",
    "mean_curves",
    "primary_estimator",
    "range_sweep",
    "cka_curves",
    "cka_gap",
    "layer_ranges",
    "mossa_states",
    "paper_b_ranges",
    "ranges_as_depth",
    "Cell",
    "GRID",
    "PAPER_CELL",
    "PAPER_CONTROL",
    "deactivation_claims",
    "drop_summary",
    "drops_per_example",
    "grid_sets",
    "mode_agreement",
    "specificity_claims",
    "table1_grid",
    "depth_table",
    "ablation_claims",
    "detection_claims",
    "diagonal_dominance",
    "finetuning_claims",
    "finetuning_seed_points",
    "iou_table",
    "k_curve_table",
    "mean_off_diagonal",
    "Figure3",
    "NCFT_METHODS",
    "SimilarityMeasure",
    "Sweep",
    "Table2",
    "TasksMeasure",
    "curve_cis",
    "layer_correlations",
    "run_sequence",
    "run_sequences",
    "sequence_metrics",
    "similarity_by_layer",
    "similarity_claims",
    "similarity_models",
    "curve_summary",
    "generalization_claims",
    "dev_curves",
    "joint_performance",
    "joint_reference",
    "metrics_table",
    "select_learning_rates",
    "ncft_learning_rates",
    "ncft_claims",
    "overlap_table",
    "performance_matrix",
    "proportion_sets",
    "proportion_sweep",
    "sweep_protocol",
    "training_union",
    "TasksMeasure",
    "TestMeasure",
    "measure_untrained",
    "neuron_arms",
    "arm_summary",
    "paired_per_example",
    "table2",
    "neuron_sets",
    "relevance_chunks",
    "relevance_scores",
    "score_condition",
    "score_task",
    "specificity_matrix",
    "stage_neurons",
    "stability_table",
    "suite_claims",
    "task_suite_table",
    "zero_and_few_shot_table",
]
