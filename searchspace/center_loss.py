"""Optuna define-by-run search space of the ``center_loss`` family.

Paper: S. Tripathi et al., "Learning Discriminative Features using Center Loss and Reconstruction as Regularizer for
Speech Emotion Recognition", IJCAI 2019 Affective Computing workshop (arXiv 1906.08873,
``papers/center-loss-reconstruction-cnn-1906.08873.txt``). Searched, as in the paper: the center-loss weight
``lambda1`` over [0.001, 5] on a log scale ("Different values in the range 0.001 to 5 were applied to lambda1, the
best results being achieved at a value of 4"), the reconstruction weight ``lambda2`` (log; the paper fine-tunes it
without reporting values) and the dropout of both FC layers over [0.25, 0.75]. Each knob is searched only for the
variants whose loss uses it. The input feature (MFCC or mel spectrogram) is not a knob of this space: a sweep lists
both shard sets under ``data.inputs`` and the driver searches ``input`` for every family alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import optuna

from searchspace.common import (
    RangeKnob,
    Suggester,
    categorical_grid,
    check_knobs,
    no_per_layer_lambda,
    positive_log,
    unit_interval,
)

VARIANTS = ("s", "s_a", "s_c", "s_a_c", "a")
RANGE_KNOBS: dict[str, RangeKnob] = {
    "lambda1": positive_log(1e-3, 5.0),  # paper: 0.001..5, best 4
    "lambda2": positive_log(1e-2, 10.0),  # paper: tuned, not reported
    "dropout": unit_interval(0.25, 0.75),  # paper: 25 % .. 75 %
}
RANGE_DEFAULTS: dict[str, tuple[float, float]] = {k: (v.low, v.high) for k, v in RANGE_KNOBS.items()}
GRID_KNOBS = ("variant",)
# Grid search holds the continuous knobs at the paper's values (lambda2 is not reported: the config default).
PAPER_FIXED: dict[str, float] = {"lambda1": 4.0, "lambda2": 1.0, "dropout": 0.5}


def uses_center(variant: str) -> bool:
    return variant in ("s_c", "s_a_c")


def uses_reconstruction_weight(variant: str) -> bool:
    """Variants where lambda2 weighs reconstruction against another loss (``a`` has reconstruction alone)."""
    return variant in ("s_a", "s_a_c")


def space(trial: optuna.Trial, variants: Sequence[str] = ("s_a_c",), ranges: Mapping | None = None,
          grids: Mapping | None = None, per_layer_lambda: bool = False, fixed: Mapping | None = None) -> dict:
    """Suggest one center-loss configuration: the variant, then the knobs its loss uses.

    Args:
        trial: The Optuna trial.
        variants: Variants to search (``s``, ``s_a``, ``s_c``, ``s_a_c``, ``a``).
        ranges: ``{knob: (low, high)}`` overrides of :data:`RANGE_KNOBS`.
        grids: ``{"variant": [...]}`` override.
        per_layer_lambda: Not used by this family (accepted so every space takes the driver's options).
        fixed: Config fields held constant, never suggested.

    Returns:
        The trial's ``CenterLossConfig`` fields.

    Raises:
        ValueError: An unknown variant or knob, or a range breaking its rule.
    """
    fixed = {} if fixed is None else fixed
    bounds, choices = check_knobs(variants, VARIANTS, ranges, grids, fixed, RANGE_KNOBS, {})
    suggester = Suggester(trial, bounds, choices, fixed, RANGE_KNOBS)
    variant = suggester.variant()
    if uses_center(variant):
        suggester.float("lambda1")
    if uses_reconstruction_weight(variant):
        suggester.float("lambda2")
    suggester.float("dropout")
    return suggester.out


def grid_search_space(variants: Sequence[str] = ("s_a_c",), grids: Mapping | None = None,
                      per_layer_lambda: bool = False, fixed: Mapping | None = None) -> dict[str, list]:
    """GridSampler space: the variants (the continuous knobs must be fixed, e.g. to :data:`PAPER_FIXED`)."""
    fixed = {} if fixed is None else fixed
    _, choices = check_knobs(variants, VARIANTS, None, grids, fixed, RANGE_KNOBS, {})
    return categorical_grid(choices, fixed, GRID_KNOBS)


def check_options(variants: Sequence[str] = ("s_a_c",), ranges: Mapping | None = None, grids: Mapping | None = None,
                  per_layer_lambda: bool = False, fixed: Mapping | None = None) -> None:
    """Validate :func:`space`'s options without a trial (the schema calls it when loading a config)."""
    no_per_layer_lambda("center_loss", per_layer_lambda)
    check_knobs(variants, VARIANTS, ranges, grids, {} if fixed is None else fixed, RANGE_KNOBS, {})
