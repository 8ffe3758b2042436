"""Optuna define-by-run search space of the ``ladder`` family.

Paper: S. Parthasarathy and C. Busso, "Ladder networks for emotion recognition: using unsupervised auxiliary tasks
to improve predictions of emotional attributes", Interspeech 2018, Section 4.3 (``papers/ladder-networks-mtl-
msp-podcast.txt``). The paper's values, all inside the default ranges below: NAdam lr = 5e-5, encoder noise
sigma^2 = 0.3, reconstruction weights lambda_l from the grid {0.1, 1, 10, 100} (1 was best), dropout 0.5 for the
DNN/DAE baselines and 0.1 for the ladders, and the MTL weights (alpha, beta) of Eq. 2 tuned on validation.

Every knob carries its ``LadderConfig`` field name (one name end to end: space, dataclass, MLflow param). Two
reparametrisations add Optuna parameters that are *not* config fields (:data:`SEARCH_ONLY_PARAMS`):

- ``beta_share``: the fraction of the weight left after arousal (``1 - alpha``) that goes to valence, so
  ``beta = beta_share * (1 - alpha)`` and ``alpha + beta <= 1`` holds for every sample, without rejection and with
  a static space (multivariate TPE and CMA-ES need one; notes 1.1). Dominance gets ``1 - alpha - beta``.
- ``lambda_0 .. lambda_{n-1}``: per-layer reconstruction weights (``per_layer_lambda=True``), input layer first;
  the space returns them as the ``lambdas`` tuple.

Warm-start points (``points_to_evaluate``) name Optuna parameters, so give ``beta_share`` / ``lambda_l`` rather than
``beta`` / a ``lambdas`` tuple; :func:`warm_start_params` converts a config-field point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Real

import optuna

from searchspace.common import RangeKnob, Suggester, check_knobs, positive_log, unit_interval

VARIANTS = ("dnn_stl", "dnn_mtl", "dae", "ladder_stl", "ladder_mtl")

# Every continuous knob: default (low, high), scale and the rule a range obeys; ``ranges`` overrides the bounds.
RANGE_KNOBS: dict[str, RangeKnob] = {
    "lr": positive_log(1e-5, 1e-2),  # paper: 5e-5
    "dropout": unit_interval(0.0, 0.6),  # paper: 0.5 (DNN, DAE) and 0.1 (ladders)
    "noise_var": RangeKnob(0.05, 1.0, False, "0 <= low < high", lambda lo, hi: 0 <= lo < hi),  # paper: 0.3
    "alpha": unit_interval(0.0, 1.0, open_top=False),  # arousal weight of Eq. 2
    "beta_share": unit_interval(0.0, 1.0, open_top=False),  # valence's share of 1 - alpha (search-only)
}
RANGE_DEFAULTS: dict[str, tuple[float, float]] = {k: (v.low, v.high) for k, v in RANGE_KNOBS.items()}
# Categorical knobs; ``grids`` overrides them. ``variant`` defaults to the ``variants`` argument.
GRID_KNOBS = ("lambdas", "variant")
LAMBDA_GRID = (0.1, 1.0, 10.0, 100.0)  # Section 4.3's grid for lambda_l

# The values grid search holds the continuous knobs at (see grid_search_space): Section 4.3's, except alpha/beta,
# which the paper tunes per attribute without reporting them (equal weights, LadderConfig's default), and dropout,
# where None means the paper's value for the variant.
PAPER_FIXED: dict[str, float | None] = {"lr": 5e-5, "noise_var": 0.3, "dropout": None,
                                        "alpha": 1.0 / 3.0, "beta": 1.0 / 3.0}

MAX_LAYERS = 16  # bound on per-layer lambdas, so SEARCH_ONLY_PARAMS can be a constant
SEARCH_ONLY_PARAMS: tuple[str, ...] = ("beta_share", *(f"lambda_{i}" for i in range(MAX_LAYERS)))

DEFAULT_LAYERS = 3  # LadderConfig's hidden=(256, 256): input + 2 hidden layers, each with a reconstruction cost

def space(trial: optuna.Trial, variants: Sequence[str] = ("ladder_mtl",), ranges: Mapping | None = None,
          grids: Mapping | None = None, per_layer_lambda: bool = False, n_layers: int | None = None,
          fixed: Mapping | None = None) -> dict:
    """Suggest one ladder-family configuration.

    The driver binds the keyword arguments (functools.partial or a module-level wrapper) so Ray's OptunaSearch can
    pickle this function by reference for ``Tuner.restore``.

    Args:
        trial: The Optuna trial (Ray's captor, a real trial, or ``optuna.trial.FixedTrial`` in tests).
        variants: Variants to search; with one, ``variant`` is returned as a constant instead of suggested.
        ranges: ``{knob: (low, high)}`` overrides for the continuous knobs in :data:`RANGE_DEFAULTS`.
        grids: ``{knob: [choices]}`` overrides for the categorical knobs ``lambdas`` and ``variant``.
        per_layer_lambda: Suggest ``lambda_0 .. lambda_{n_layers-1}`` instead of one shared ``lambdas``.
        n_layers: Reconstruction costs per ladder (input + hidden layers); default ``len(fixed["hidden"]) + 1``,
            else 3 (the paper's two hidden layers).
        fixed: Config fields held constant: returned as they are and never suggested (e.g. ``target``,
            ``hidden``, or :data:`PAPER_FIXED` for grid search).

    Returns:
        The trial's ``LadderConfig`` fields: the suggested knobs, the derived ``beta`` (and ``lambdas`` tuple when
        per layer) and ``fixed``. Ray merges it over the captured suggestions, which add the
        :data:`SEARCH_ONLY_PARAMS` the trainable ignores.

    Raises:
        ValueError: An unknown variant or knob, a bad range or grid (the message says what must hold).
    """
    fixed = {} if fixed is None else fixed
    bounds, choices, n_layers = _check(variants, ranges, grids, per_layer_lambda, n_layers, fixed)
    suggester = Suggester(trial, bounds, choices, fixed, RANGE_KNOBS)
    out, suggest = suggester.out, suggester.float
    variant = suggester.variant()
    ladder = variant.startswith("ladder")

    suggest("lr")
    suggest("dropout")
    if ladder or variant == "dae":
        suggest("noise_var")
    if ladder and "lambdas" not in fixed:
        if per_layer_lambda:
            out["lambdas"] = tuple(trial.suggest_categorical(f"lambda_{i}", choices["lambdas"])
                                   for i in range(n_layers))
        else:
            out["lambdas"] = trial.suggest_categorical("lambdas", choices["lambdas"])
    if variant.endswith("_mtl") and not ("alpha" in fixed and "beta" in fixed):
        if "beta" in fixed:
            # A fixed beta caps alpha at 1 - beta; the bound is the same in every trial, so the space stays static.
            suggest("alpha", high=min(bounds["alpha"][1], 1.0 - fixed["beta"]))
        else:
            alpha = suggest("alpha")
            out["beta"] = suggest("beta_share") * (1.0 - alpha)  # alpha + beta <= 1 by construction
            out.pop("beta_share", None)
    return out


def grid_search_space(variants: Sequence[str] = ("ladder_mtl",), grids: Mapping | None = None,
                      per_layer_lambda: bool = False, n_layers: int | None = None,
                      fixed: Mapping | None = None) -> dict[str, list]:
    """The ``search_space`` of an ``optuna.samplers.GridSampler`` over :func:`space`'s categorical knobs.

    Grid search covers the categorical knobs only: ``variant`` (when several) and ``lambdas`` (or ``lambda_l``),
    the grid the paper ran. The continuous knobs must then be held constant by passing them in the space's
    ``fixed``, e.g. ``fixed={**PAPER_FIXED, **config_fixed}``; a continuous knob that is still suggested makes
    GridSampler fail in the first trial ("parameter ... is not found in the given grid"). Take the same arguments
    as :func:`space`. Non-ladder variants have no ``lambdas``, so a grid that mixes them with ladders runs each of
    them once per lambda value (same config); set ``num_samples`` to the product of the list lengths.

    Returns:
        ``{param: [values]}``; empty when nothing categorical is searched.

    Raises:
        ValueError: As :func:`space`.
    """
    fixed = {} if fixed is None else fixed
    _, choices, n_layers = _check(variants, None, grids, per_layer_lambda, n_layers, fixed)
    out: dict[str, list] = {}
    names = [fixed["variant"]] if "variant" in fixed else choices["variant"]
    if "variant" not in fixed and len(names) > 1:
        out["variant"] = list(names)
    if "lambdas" not in fixed and any(v.startswith("ladder") for v in names):
        if per_layer_lambda:
            out.update({f"lambda_{i}": list(choices["lambdas"]) for i in range(n_layers)})
        else:
            out["lambdas"] = list(choices["lambdas"])
    return out


def warm_start_params(point: Mapping, per_layer_lambda: bool = False) -> dict:
    """A warm-start point in config-field names -> the Optuna parameter names :func:`space` suggests.

    ``beta`` becomes ``beta_share = beta / (1 - alpha)`` (needs ``alpha``), and with ``per_layer_lambda`` a
    ``lambdas`` sequence (or one number) becomes ``lambda_0 ..``. Without this, Optuna would ignore ``beta`` and
    sample ``beta_share``. Other keys pass through.

    Raises:
        ValueError: ``beta`` without ``alpha``, or ``alpha + beta > 1``.
    """
    out = dict(point)
    if "beta" in out:
        if "alpha" not in out:
            raise ValueError(f"a warm-start point with beta needs alpha too (beta_share = beta / (1 - alpha)), "
                             f"got {dict(point)}")
        alpha, beta = out["alpha"], out.pop("beta")
        if alpha + beta > 1 + 1e-9 or beta < 0:
            raise ValueError(f"alpha + beta <= 1 and beta >= 0 must hold, got alpha={alpha}, beta={beta}")
        out["beta_share"] = 0.0 if alpha >= 1 else min(1.0, beta / (1.0 - alpha))
    if per_layer_lambda and "lambdas" in out:
        lambdas = out.pop("lambdas")
        if isinstance(lambdas, Real):
            raise ValueError(f"per_layer_lambda needs lambdas per layer in a warm-start point, got {lambdas}; "
                             f"give a list, input layer first")
        out.update({f"lambda_{i}": lam for i, lam in enumerate(lambdas)})
    return out


def check_options(variants: Sequence[str] = ("ladder_mtl",), ranges: Mapping | None = None,
                  grids: Mapping | None = None, per_layer_lambda: bool = False, n_layers: int | None = None,
                  fixed: Mapping | None = None) -> None:
    """Validate :func:`space`'s options without a trial (the schema calls it when loading a config).

    Raises:
        ValueError: As :func:`space`.
    """
    _check(variants, ranges, grids, per_layer_lambda, n_layers, {} if fixed is None else fixed)


def _check(variants, ranges, grids, per_layer_lambda, n_layers, fixed) -> tuple[dict, dict, int]:
    """Validate the options; return (bounds per continuous knob, choices per categorical knob, n_layers)."""
    grids = {} if grids is None else grids
    lambdas = grids.get("lambdas", LAMBDA_GRID)
    if (isinstance(lambdas, str) or not isinstance(lambdas, Sequence) or not lambdas
            or not all(isinstance(v, Real) and not isinstance(v, bool) and v >= 0 for v in lambdas)
            or len(set(lambdas)) != len(lambdas)):
        raise ValueError(f"lambdas grid must be a non-empty list of distinct numbers >= 0, got {lambdas!r}")
    bounds, choices = check_knobs(variants, VARIANTS, ranges, grids, fixed, RANGE_KNOBS, {"lambdas": LAMBDA_GRID})
    choices["lambdas"] = [float(v) for v in choices["lambdas"]]
    if "beta" in fixed and "alpha" not in fixed and not bounds["alpha"][0] < 1.0 - fixed["beta"]:
        raise ValueError(f"alpha's low {bounds['alpha'][0]} must be < 1 - beta = {1.0 - fixed['beta']:g} "
                         f"(fixed beta={fixed['beta']}); lower the alpha range or beta")
    if n_layers is None:
        n_layers = len(fixed["hidden"]) + 1 if "hidden" in fixed else DEFAULT_LAYERS
    if per_layer_lambda and not (isinstance(n_layers, int) and 1 <= n_layers <= MAX_LAYERS):
        raise ValueError(f"n_layers must satisfy 1 <= n_layers <= {MAX_LAYERS} for per-layer lambdas, "
                         f"got {n_layers!r}")
    return bounds, choices, n_layers
