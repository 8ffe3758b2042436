"""Optuna define-by-run search space of the ``selective_mtl`` family.

Paper: selective multi-task learning of SER with style (acted vs spontaneous) recognition across an acted and a
spontaneous corpus (``papers/selective-mtl-acted-spontaneous.txt``), Table 2 and Section 4.2: Adam, lr 1e-4, decay
1e-5, BiLSTM dropout 0.2, 8 attention heads, and the SER loss weight lambda of Eq. 3 over 0.1-0.9. Searched here:
``lam`` (the settings that weigh a style loss, ``mtl`` and ``selective_mtl``), ``lr`` (log), ``dropout`` and
``heads``. The settings themselves (``separate``, ``combined``, ``mtl``, ``selective_mtl``) are the variants, and the
paper's "half" data setting is the config field ``half`` (fix it, or grid it, per sweep).
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

VARIANTS = ("separate", "combined", "mtl", "selective_mtl")
RANGE_KNOBS: dict[str, RangeKnob] = {
    "lam": RangeKnob(0.1, 0.9, False, "0 < low < high < 1", lambda lo, hi: 0 < lo < hi < 1),  # paper 0.1-0.9
    "lr": positive_log(3e-5, 1e-3),  # paper: 1e-4
    "dropout": unit_interval(0.0, 0.5),  # paper: 0.2
}
RANGE_DEFAULTS: dict[str, tuple[float, float]] = {k: (v.low, v.high) for k, v in RANGE_KNOBS.items()}
GRID_DEFAULTS: dict[str, tuple] = {"heads": (4, 8), "half": (False,)}
GRID_KNOBS = ("variant", *GRID_DEFAULTS)
# Grid search holds the continuous knobs at the paper's values (lambda 0.8: the paper's MTL runs).
PAPER_FIXED: dict[str, float] = {"lam": 0.8, "lr": 1e-4, "dropout": 0.2}


def uses_style_loss(variant: str) -> bool:
    return variant in ("mtl", "selective_mtl")


def space(trial: optuna.Trial, variants: Sequence[str] = ("selective_mtl",), ranges: Mapping | None = None,
          grids: Mapping | None = None, per_layer_lambda: bool = False, fixed: Mapping | None = None) -> dict:
    """Suggest one selective-MTL configuration: the setting (variant), then its knobs.

    Args:
        trial: The Optuna trial.
        variants: Settings to search.
        ranges: ``{knob: (low, high)}`` overrides of :data:`RANGE_KNOBS`.
        grids: ``{"variant" | "heads" | "half": [...]}`` overrides (``half`` defaults to ``[False]``, not searched).
        per_layer_lambda: Not used by this family.
        fixed: Config fields held constant, never suggested.

    Returns:
        The trial's ``SelectiveMTLConfig`` fields.

    Raises:
        ValueError: An unknown setting or knob, or a range breaking its rule.
    """
    fixed = {} if fixed is None else fixed
    bounds, choices = check_knobs(variants, VARIANTS, ranges, grids, fixed, RANGE_KNOBS, GRID_DEFAULTS)
    suggester = Suggester(trial, bounds, choices, fixed, RANGE_KNOBS)
    variant = suggester.variant()
    if uses_style_loss(variant):
        suggester.float("lam")
    suggester.float("lr")
    suggester.float("dropout")
    suggester.categorical("heads")
    suggester.categorical("half")
    return suggester.out


def grid_search_space(variants: Sequence[str] = ("selective_mtl",), grids: Mapping | None = None,
                      per_layer_lambda: bool = False, fixed: Mapping | None = None) -> dict[str, list]:
    """GridSampler space over the settings, ``heads`` and ``half`` (continuous knobs fixed, e.g. to
    :data:`PAPER_FIXED`)."""
    fixed = {} if fixed is None else fixed
    _, choices = check_knobs(variants, VARIANTS, None, grids, fixed, RANGE_KNOBS, GRID_DEFAULTS)
    return categorical_grid(choices, fixed, GRID_KNOBS)


def check_options(variants: Sequence[str] = ("selective_mtl",), ranges: Mapping | None = None,
                  grids: Mapping | None = None, per_layer_lambda: bool = False, fixed: Mapping | None = None) -> None:
    """Validate :func:`space`'s options without a trial (the schema calls it when loading a config)."""
    no_per_layer_lambda("selective_mtl", per_layer_lambda)
    _, choices = check_knobs(variants, VARIANTS, ranges, grids, {} if fixed is None else fixed, RANGE_KNOBS,
                             GRID_DEFAULTS)
    if any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in choices["heads"]):
        raise ValueError(f"heads grid must hold positive integers, got {choices['heads']}")
    if any(not isinstance(h, bool) for h in choices["half"]):
        raise ValueError(f"half grid must hold true/false, got {choices['half']}")
