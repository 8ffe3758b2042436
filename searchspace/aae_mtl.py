"""Optuna define-by-run search space of the ``aae_mtl`` family.

Paper: S. Latif et al., "Multi-task semi-supervised adversarial autoencoding for speech emotion recognition"
(``papers/semi-supervised-aae-mtl-gender-speaker.txt``). Section 5.1 evaluates alpha and beta "ranging from 0.1 to
1.0 on the validation set" (Section 6.3: alpha 0.1-1.0 at beta 0.5, beta 0.1-0.9 at alpha 1); Section 6.2 varies the
number of auxiliary LibriSpeech speakers (Fig. 4, a plateau beyond 600); the optimiser is SGD at lr 1e-4.

Knobs (config field names, one name end to end):

* ``alpha`` (L_AE's weight, Eq. 1) for the variants with a decoder (``ae``, ``aae_stl``, ``aae_mtl``).
* ``beta`` (L_E against L_G + L_S, Eq. 2; ``L_c = beta * L_E`` for ``ae`` and ``aae_stl``), same variants.
* ``lr`` (log).
* ``aux_speakers`` (integer), for ``aae_mtl``: the auxiliary speakers whose rows train the gender and speaker tasks
  (more than the auxiliary data hold keeps them all).
* ``aux_tasks`` (categorical, ``aae_mtl``): gender, speaker or both (Table 5); ``both`` unless a grid names others.
  Each value is its own row of the paper's tables (``Family.arm_params``).

``cnn`` searches the learning rate only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import optuna

from searchspace.common import RangeKnob, Suggester, categorical_grid, check_knobs, no_per_layer_lambda, positive_log

VARIANTS = ("cnn", "ae", "aae_stl", "aae_mtl")
AUX_TASKS = ("gender", "speaker", "both")
RANGE_KNOBS: dict[str, RangeKnob] = {
    "alpha": RangeKnob(0.1, 1.0, False, "0 < low < high <= 1", lambda lo, hi: 0 < lo < hi <= 1),
    "beta": RangeKnob(0.1, 0.9, False, "0 < low < high < 1", lambda lo, hi: 0 < lo < hi < 1),
    "lr": positive_log(1e-5, 1e-3),  # paper: 1e-4
    "aux_speakers": RangeKnob(100, 900, False, "1 <= low < high, both integers",
                              lambda lo, hi: 1 <= lo < hi and float(lo).is_integer() and float(hi).is_integer()),
}
RANGE_DEFAULTS: dict[str, tuple[float, float]] = {k: (v.low, v.high) for k, v in RANGE_KNOBS.items()}
GRID_DEFAULTS: dict[str, tuple] = {"aux_tasks": ("both",)}
GRID_KNOBS = ("variant", *GRID_DEFAULTS)
# Grid search holds the continuous knobs at the paper's values: the AAE's best alpha and beta on IEMOCAP
# (Section 5.1), SGD's lr and 600 LibriSpeech speakers (Section 4.1.3).
PAPER_FIXED: dict[str, float] = {"alpha": 0.4, "beta": 0.6, "lr": 1e-4, "aux_speakers": 600}


def uses_weights(variant: str) -> bool:
    """Whether the variant has alpha and beta (a decoder, and L_c weighted by beta)."""
    return variant != "cnn"


def space(trial: optuna.Trial, variants: Sequence[str] = ("aae_mtl",), ranges: Mapping | None = None,
          grids: Mapping | None = None, per_layer_lambda: bool = False, fixed: Mapping | None = None) -> dict:
    """Suggest one aae_mtl configuration: the variant, then its knobs (see the module docstring).

    Args:
        trial: The Optuna trial.
        variants: Variants to search (``cnn``, ``ae``, ``aae_stl``, ``aae_mtl``).
        ranges: ``{knob: (low, high)}`` overrides of :data:`RANGE_KNOBS`.
        grids: ``{"variant" | "aux_tasks": [...]}`` overrides.
        per_layer_lambda: Not used by this family (accepted so every space takes the driver's options).
        fixed: Config fields held constant, never suggested.

    Returns:
        The trial's ``AAEMTLConfig`` fields.

    Raises:
        ValueError: An unknown variant or knob, a range breaking its rule, an unknown auxiliary task.
    """
    fixed = {} if fixed is None else fixed
    bounds, choices = _check(variants, ranges, grids, fixed)
    suggester = Suggester(trial, bounds, choices, fixed, RANGE_KNOBS)
    variant = suggester.variant()
    if uses_weights(variant):
        suggester.float("alpha")
        suggester.float("beta")
    suggester.float("lr")
    if variant == "aae_mtl":
        suggester.categorical("aux_tasks")
        if "aux_speakers" not in fixed:
            low, high = bounds["aux_speakers"]
            suggester.out["aux_speakers"] = trial.suggest_int("aux_speakers", int(low), int(high))
    return suggester.out


def grid_search_space(variants: Sequence[str] = ("aae_mtl",), grids: Mapping | None = None,
                      per_layer_lambda: bool = False, fixed: Mapping | None = None) -> dict[str, list]:
    """GridSampler space over the variants and auxiliary tasks (continuous knobs fixed, e.g. to
    :data:`PAPER_FIXED`)."""
    fixed = {} if fixed is None else fixed
    _, choices = _check(variants, None, grids, fixed)
    return categorical_grid(choices, fixed, GRID_KNOBS)


def check_options(variants: Sequence[str] = ("aae_mtl",), ranges: Mapping | None = None,
                  grids: Mapping | None = None, per_layer_lambda: bool = False, fixed: Mapping | None = None) -> None:
    """Validate :func:`space`'s options without a trial (the schema calls it when loading a config)."""
    no_per_layer_lambda("aae_mtl", per_layer_lambda)
    _check(variants, ranges, grids, {} if fixed is None else fixed)


def _check(variants, ranges, grids, fixed) -> tuple[dict, dict]:
    bounds, choices = check_knobs(variants, VARIANTS, ranges, grids, fixed, RANGE_KNOBS, GRID_DEFAULTS)
    tasks = [fixed["aux_tasks"]] if "aux_tasks" in fixed else choices["aux_tasks"]
    bad = [t for t in tasks if t not in AUX_TASKS]
    if bad or len(set(tasks)) != len(tasks):
        raise ValueError(f"aux_tasks values must be distinct names from {list(AUX_TASKS)}, got {list(tasks)}")
    if "aux_speakers" in fixed:
        n = fixed["aux_speakers"]
        if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
            raise ValueError(f"fixed aux_speakers must be an integer >= 1 (or null: every auxiliary speaker), got "
                             f"{n!r}")
    rules = {"alpha": ("0 < alpha <= 1", lambda v: 0 < v <= 1), "beta": ("0 < beta < 1", lambda v: 0 < v < 1)}
    for name, (rule, holds) in rules.items():
        value = fixed.get(name)
        if name in fixed and not (isinstance(value, int | float) and not isinstance(value, bool) and holds(value)):
            raise ValueError(f"fixed {name} must satisfy {rule}, got {value!r}")
    return bounds, choices
