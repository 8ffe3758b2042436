"""Optuna define-by-run search space of the ``dcgan`` family.

Paper: J. Chang and S. Scherer, "Learning representations of emotional speech with deep convolutional generative
adversarial networks", ICASSP 2017, arXiv 1705.02394 (``papers/multitask-dcgan-valence-1705.02394.txt``), Section 5
("Experimental Procedure"): each model's crop width w, convolutional filter size ("w gets divided by 8 to account
for each halving of image size from the 3 convolutional layers leading up to the last one"), number of filters
(step size 4), batch size and learning rate were drawn at random and kept by validation accuracy. The sets the paper
drew from and its Table 1 are lost from the stored text, so the default ranges below are ours, around DCGAN's
values (Radford et al. 2016: 5x5 kernels, 64 filters, Adam lr 2e-4); the paper's procedure is ``sampler: random``.

Knobs (config field names, one name end to end):

* ``crop_width`` (categorical, frames; multiples of 16 so four halvings and the generator's doublings meet).
* ``filter_size``, derived from the search-only ``filter_share`` in (0, 1]: ``filter_size = max(1,
  round(filter_share * (crop_width // 8)))``. The filter size is read as bounded by crop_width / 8, the width of the
  map the last conv layer reads; searching its share keeps the space static (multivariate TPE and CMA-ES need one)
  while every sample fits its crop width. A warm-start point naming ``filter_size`` is converted
  (:func:`warm_start_params`).
* ``filters`` (integer, step 4).
* ``lr`` (log).

Batch size is a knob of the paper's search too, but a loop setting (``train.batch_size``): search it with
``search.grids: {batch_size: [...]}``, which the driver suggests for every family (``schema.LOOP_GRIDS``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import optuna

from searchspace.common import RangeKnob, Suggester, categorical_grid, check_knobs, no_per_layer_lambda, positive_log

VARIANTS = ("basic_cnn", "multitask_cnn", "basic_dcgan", "multitask_dcgan")
FILTER_STEP = 4  # "number of convolutional filters (step size 4)"
RANGE_KNOBS: dict[str, RangeKnob] = {
    "lr": positive_log(1e-5, 1e-3),  # DCGAN: 2e-4
    "filter_share": RangeKnob(0.1, 1.0, False, "0 < low < high <= 1", lambda lo, hi: 0 < lo < hi <= 1),
    "filters": RangeKnob(16, 64, False, f"{FILTER_STEP} <= low < high, both multiples of {FILTER_STEP}",
                         lambda lo, hi: FILTER_STEP <= lo < hi and lo % FILTER_STEP == 0 and hi % FILTER_STEP == 0),
}
RANGE_DEFAULTS: dict[str, tuple[float, float]] = {k: (v.low, v.high) for k, v in RANGE_KNOBS.items()}
GRID_DEFAULTS: dict[str, tuple] = {"crop_width": (64, 128, 256)}  # about 1, 2 and 4 s at a 16 ms hop
GRID_KNOBS = ("variant", *GRID_DEFAULTS)
SEARCH_ONLY_PARAMS: tuple[str, ...] = ("filter_share",)
# Grid search covers the variants and crop widths and holds the rest at DCGAN's values (the paper's are not known).
PAPER_FIXED: dict[str, float] = {"lr": 2e-4, "filters": 64, "filter_size": 5}


def filter_size_for(share: float, crop_width: int) -> int:
    """``max(1, round(share * (crop_width // 8)))``: the kernel as a share of the last conv layer's input width."""
    return max(1, round(share * (int(crop_width) // 8)))


def space(trial: optuna.Trial, variants: Sequence[str] = ("multitask_dcgan",), ranges: Mapping | None = None,
          grids: Mapping | None = None, per_layer_lambda: bool = False, fixed: Mapping | None = None) -> dict:
    """Suggest one dcgan configuration: the variant, crop width, filter size (via its share), filters and lr.

    Args:
        trial: The Optuna trial.
        variants: Variants to search (``basic_cnn``, ``multitask_cnn``, ``basic_dcgan``, ``multitask_dcgan``).
        ranges: ``{knob: (low, high)}`` overrides of :data:`RANGE_KNOBS`.
        grids: ``{"variant" | "crop_width": [...]}`` overrides.
        per_layer_lambda: Not used by this family (accepted so every space takes the driver's options).
        fixed: Config fields held constant, never suggested (a fixed ``filter_size`` replaces ``filter_share``).

    Returns:
        The trial's ``DCGANConfig`` fields (``filter_share`` is Optuna's parameter, not returned).

    Raises:
        ValueError: An unknown variant or knob, a range breaking its rule, a crop width that is not a multiple of 16.
    """
    fixed = {} if fixed is None else fixed
    bounds, choices = _check(variants, ranges, grids, fixed)
    suggester = Suggester(trial, bounds, choices, fixed, RANGE_KNOBS)
    suggester.variant()
    width = suggester.categorical("crop_width")
    if "filter_size" not in fixed:
        suggester.out["filter_size"] = filter_size_for(suggester.float("filter_share"), width)
        suggester.out.pop("filter_share", None)
    if "filters" not in fixed:
        low, high = bounds["filters"]
        suggester.out["filters"] = trial.suggest_int("filters", int(low), int(high), step=FILTER_STEP)
    suggester.float("lr")
    return suggester.out


def grid_search_space(variants: Sequence[str] = ("multitask_dcgan",), grids: Mapping | None = None,
                      per_layer_lambda: bool = False, fixed: Mapping | None = None) -> dict[str, list]:
    """GridSampler space over the variants and crop widths (continuous knobs fixed, e.g. to :data:`PAPER_FIXED`)."""
    fixed = {} if fixed is None else fixed
    _, choices = _check(variants, None, grids, fixed)
    return categorical_grid(choices, fixed, GRID_KNOBS)


def warm_start_params(point: Mapping, per_layer_lambda: bool = False) -> dict:
    """A warm-start point in config-field names -> the Optuna parameters :func:`space` suggests: ``filter_size``
    becomes ``filter_share = filter_size / (crop_width // 8)`` (needs ``crop_width``). Other keys pass through.

    Raises:
        ValueError: ``filter_size`` without ``crop_width``, or larger than ``crop_width // 8``.
    """
    out = dict(point)
    if "filter_size" in out:
        if "crop_width" not in out:
            raise ValueError(f"a warm-start point with filter_size needs crop_width too (filter_share = filter_size "
                             f"/ (crop_width // 8)), got {dict(point)}")
        size, width = out.pop("filter_size"), int(out["crop_width"])
        if not 1 <= size <= width // 8:
            raise ValueError(f"1 <= filter_size <= crop_width // 8 must hold, got filter_size={size}, "
                             f"crop_width={width}")
        out["filter_share"] = size / (width // 8)
    return out


def check_options(variants: Sequence[str] = ("multitask_dcgan",), ranges: Mapping | None = None,
                  grids: Mapping | None = None, per_layer_lambda: bool = False, fixed: Mapping | None = None) -> None:
    """Validate :func:`space`'s options without a trial (the schema calls it when loading a config)."""
    no_per_layer_lambda("dcgan", per_layer_lambda)
    _check(variants, ranges, grids, {} if fixed is None else fixed)


def _check(variants, ranges, grids, fixed) -> tuple[dict, dict]:
    bounds, choices = check_knobs(variants, VARIANTS, ranges, grids, fixed, RANGE_KNOBS, GRID_DEFAULTS)
    widths = [fixed["crop_width"]] if "crop_width" in fixed else choices["crop_width"]
    if any(not _is_int(w) or w < 16 or w % 16 for w in widths):
        raise ValueError(f"crop_width values must be integers, multiples of 16 (at least 16), got {list(widths)}")
    low, high = bounds["filters"]
    if not (math.isclose(low, round(low)) and math.isclose(high, round(high))):
        raise ValueError(f"filters range must hold integers, got ({low}, {high})")
    if "filter_size" in fixed:
        size = fixed["filter_size"]
        too_small = [w for w in widths if not (_is_int(size) and 1 <= size <= w // 8)]
        if too_small:
            raise ValueError(f"fixed filter_size must satisfy 1 <= filter_size <= crop_width // 8 for every crop "
                             f"width, got filter_size={size!r} with crop widths {too_small}; lower it or drop those "
                             f"widths")
    return bounds, choices


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
