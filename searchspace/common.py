"""The range / grid / fixed override machinery every family's search space shares (written once, here).

A family declares its knobs as data: continuous knobs with default ``(low, high)`` ranges and a rule each range must
satisfy (:class:`RangeKnob`), categorical knobs with default choices, and its variants. :func:`check_knobs`
validates a sweep's ``search.ranges``, ``search.grids`` and ``model.fixed`` against that declaration once, and
:class:`Suggester` turns the result into Optuna suggestions inside the family's ``space(trial)``, returning fixed
values untouched. The family's ``space`` then holds only its own knobs and how they depend on the variant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real

import optuna


@dataclass(frozen=True)
class RangeKnob:
    """A continuous knob: its default range, whether it is searched on a log scale, and the rule a range obeys.

    Attributes:
        low: Default lower bound.
        high: Default upper bound.
        log: Suggest on a log scale (then ``0 < low`` must hold).
        rule: The rule in words, for error messages (e.g. ``"0 <= low < high < 1"``).
        holds: ``holds(low, high) -> bool``.
    """

    low: float
    high: float
    log: bool = False
    rule: str = "low < high"
    holds: Callable[[float, float], bool] = staticmethod(lambda lo, hi: lo < hi)


def positive_log(low: float, high: float, log: bool = True) -> RangeKnob:
    """A knob searched on a log scale (learning rates, loss weights): ``0 < low < high``."""
    return RangeKnob(low, high, log, "0 < low < high", lambda lo, hi: 0 < lo < hi)


def unit_interval(low: float, high: float, *, open_top: bool = True) -> RangeKnob:
    """A share or probability: ``0 <= low < high < 1`` (``<= 1`` when ``open_top`` is False)."""
    if open_top:
        return RangeKnob(low, high, False, "0 <= low < high < 1", lambda lo, hi: 0 <= lo < hi < 1)
    return RangeKnob(low, high, False, "0 <= low < high <= 1", lambda lo, hi: 0 <= lo < hi <= 1)


def no_per_layer_lambda(family: str, per_layer_lambda: bool) -> None:
    """Refuse ``search.per_layer_lambda`` for a family other than the ladder's (it has no per-layer weights)."""
    if per_layer_lambda:
        raise ValueError(f"search.per_layer_lambda is a ladder-family option; the {family} family has no per-layer "
                         f"weights, remove it")


def check_knobs(variants: Sequence[str], valid_variants: Sequence[str], ranges: Mapping | None,
                grids: Mapping | None, fixed: Mapping, range_knobs: Mapping[str, RangeKnob],
                grid_knobs: Mapping[str, Sequence]) -> tuple[dict[str, tuple[float, float]], dict[str, list]]:
    """Validate a space's options; return (bounds per continuous knob, choices per categorical knob).

    Args:
        variants: The variants to search (``model.variants``); ``grids["variant"]`` overrides them.
        valid_variants: The family's variants.
        ranges: ``{knob: [low, high]}`` overrides of ``range_knobs``.
        grids: ``{knob: [choices]}`` overrides of ``grid_knobs`` (and ``variant``).
        fixed: Config fields held constant; a knob may not be both fixed and searched.
        range_knobs: The family's continuous knobs.
        grid_knobs: The family's categorical knobs and their default choices (``variant`` is implied).

    Raises:
        ValueError: An unknown knob, a knob both fixed and searched, a range breaking its rule, a bad variant list.
    """
    ranges = {} if ranges is None else ranges
    grids = {} if grids is None else grids
    unknown = sorted(set(ranges) - set(range_knobs))
    if unknown:
        raise ValueError(f"unknown range knob(s) {unknown}; valid: {sorted(range_knobs)}")
    grid_names = (*grid_knobs, "variant")
    unknown = sorted(set(grids) - set(grid_names))
    if unknown:
        raise ValueError(f"unknown grid knob(s) {unknown}; valid: {list(grid_names)}")
    both = sorted(set(fixed) & (set(ranges) | set(grids)))
    if both:
        raise ValueError(f"knob(s) {both} are both fixed and searched; drop them from fixed or from ranges/grids")
    bounds = {name: (knob.low, knob.high) for name, knob in range_knobs.items()}
    for name, pair in ranges.items():
        knob = range_knobs[name]
        if (isinstance(pair, str | bytes) or not isinstance(pair, Sequence) or len(pair) != 2
                or not all(isinstance(v, Real) and not isinstance(v, bool) for v in pair)):
            raise ValueError(f"{name} range must be [low, high] with two numbers, got {pair!r}")
        if not knob.holds(*pair):
            raise ValueError(f"{name} range must satisfy {knob.rule}, got {tuple(pair)}")
        bounds[name] = (float(pair[0]), float(pair[1]))
    names = grids.get("variant", variants)
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ValueError(f"variants must be a non-empty list of names from {list(valid_variants)}, got {names!r}")
    bad = [v for v in names if v not in valid_variants]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"variants must be distinct names from {list(valid_variants)}, got {list(names)}")
    if "variant" in fixed and fixed["variant"] not in valid_variants:
        raise ValueError(f"fixed variant must be one of {list(valid_variants)}, got {fixed['variant']!r}")
    choices: dict[str, list] = {"variant": list(names)}
    for name, default in grid_knobs.items():
        values = grids.get(name, default)
        if isinstance(values, str) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"{name} grid must be a non-empty list, got {values!r}")
        choices[name] = list(values)
    return bounds, choices


class Suggester:
    """Optuna suggestions for one trial under a sweep's overrides; :attr:`out` collects the config fields.

    Fixed fields are copied into ``out`` first and never suggested, so a family's space reads the same either way.
    """

    def __init__(self, trial: optuna.Trial, bounds: Mapping, choices: Mapping, fixed: Mapping,
                 range_knobs: Mapping[str, RangeKnob]):
        self.trial, self.bounds, self.choices, self.fixed = trial, bounds, choices, fixed
        self.range_knobs = range_knobs
        self.out: dict = dict(fixed)

    def float(self, name: str, low: float | None = None, high: float | None = None):
        """``name`` from its (overridden) range on the knob's scale, or its fixed value."""
        if name in self.fixed:
            return self.fixed[name]
        lo, hi = self.bounds[name]
        self.out[name] = self.trial.suggest_float(name, lo if low is None else low, hi if high is None else high,
                                                  log=self.range_knobs[name].log)
        return self.out[name]

    def categorical(self, name: str):
        """``name`` from its (overridden) grid, or its fixed value; a one-value grid is returned as a constant."""
        if name in self.fixed:
            return self.fixed[name]
        values = self.choices[name]
        self.out[name] = values[0] if len(values) == 1 else self.trial.suggest_categorical(name, values)
        return self.out[name]

    def variant(self) -> str:
        """The trial's variant: fixed, the only one, or suggested among several."""
        return self.categorical("variant")


def categorical_grid(choices: Mapping[str, list], fixed: Mapping, names: Sequence[str]) -> dict[str, list]:
    """GridSampler ``search_space`` over the categorical knobs ``names`` that are searched (more than one value and
    not fixed)."""
    return {n: list(choices[n]) for n in names if n not in fixed and len(choices[n]) > 1}
