"""Headless plots of a sweep, as PNG bytes, for the sweep driver to log to MLflow as artifacts.

Plots of the search: Optuna's own matplotlib optimization history and parallel coordinates, which draw through
pyplot, and PED-ANOVA hyperparameter importances. Plots of a finished model: validation curves, predicted vs true for a
regression attribute, confusion matrix. Everything but Optuna's two plots uses a bare ``Figure`` on the Agg canvas and
never touches pyplot; no figure outlives the call. Every figure is 7 x 4.5 inches at 100 dpi (700 x 450 pixels).

The numbers printed on the plots (CCC, Pearson r, UA) come from ``trainables.metrics``, the functions that compute
the logged metrics, so a plot's title always agrees with the run's metric (degenerate cases included).
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    import optuna
    from matplotlib.axes import Axes

__all__ = ["optuna_plots", "curves_plot", "scatter_plot", "confusion_plot", "tsne_plot"]

FIGSIZE = (7.0, 4.5)
DPI = 100

HISTORY = "optimization_history.png"
IMPORTANCES = "param_importances.png"
PARALLEL = "parallel_coordinate.png"

# PED-ANOVA measures how much each parameter's distribution among the top `quantile` of trials departs from its
# distribution over all trials; 0.1 is Optuna's default ("what it takes to reach the top 10 %").
IMPORTANCE_QUANTILE = 0.1


# ---- the search ---------------------------------------------------------------------------------------------

def optuna_plots(study: optuna.Study, *, target_name: str | None = None) -> tuple[dict[str, bytes], dict[str, str]]:
    """PNGs of a search (history, importances, parallel coordinates), and why any of them could not be drawn.

    Only COMPLETE trials with a finite value count; FAIL, PRUNED and RUNNING trials are ignored. Conditional
    parameters (present in some trials only, e.g. ``noise_var`` for the ladder variants) are kept: PED-ANOVA scores
    them per regime (active / inactive), and the parallel-coordinate plot gives trials without the parameter a
    ``None`` tick on its axis. A plot is skipped, with its reason, when fewer than 2 such trials exist, or (the
    importances and parallel coordinates) when they have no parameter at all; the history also needs a
    single-objective study (for several objectives the importances are those of reaching the Pareto front). Nothing
    is raised for these cases.

    Args:
        study: The search's study (Ray Tune's ``OptunaSearch`` keeps one; maximize or minimize).
        target_name: What the objective is (e.g. ``"val_ccc_arousal"``), for axis labels and titles; defaults to
            the study's metric name, else ``"objective"``.

    Returns:
        ``(pngs, skipped)``: ``{"optimization_history.png" | "param_importances.png" | "parallel_coordinate.png":
        PNG bytes}`` for the plots drawn, and ``{name: reason}`` for the others; together they hold all three names.
    """
    from optuna.exceptions import ExperimentalWarning
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    multi = len(study.directions) > 1
    if target_name is None:
        target_name = study.metric_names[0] if study.metric_names and not multi else "objective"
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if t.values is not None and all(math.isfinite(v) for v in t.values)]
    n_all = len(study.trials)
    params = sorted({p for t in trials for p in t.params})

    skipped: dict[str, str] = {}
    if len(trials) < 2:
        reason = (f"{len(trials)} complete trial(s) with a finite value among {n_all}; "
                  f"a plot of the search needs at least 2")
        skipped = dict.fromkeys((HISTORY, IMPORTANCES, PARALLEL), reason)
    else:
        if multi:
            skipped[HISTORY] = f"the study has {len(study.directions)} objectives; the history plots one"
        if not params:
            reason = f"the {len(trials)} complete trials have no parameters"
            skipped[IMPORTANCES] = skipped[PARALLEL] = reason
    if len(skipped) == 3:
        return {}, skipped

    _select_headless_backend()
    from optuna.visualization import matplotlib as ovm

    direction = "/".join("maximize" if d == StudyDirection.MAXIMIZE else "minimize" for d in study.directions)
    counts = f"{len(trials)} of {n_all} trials complete"  # RUNNING and FAIL trials make up the rest
    pngs: dict[str, bytes] = {}
    with warnings.catch_warnings():
        # Every Optuna matplotlib plot is marked experimental; the warning says nothing about this study.
        warnings.simplefilter("ignore", ExperimentalWarning)
        if HISTORY not in skipped:
            pngs[HISTORY] = _optuna_png(
                lambda: ovm.plot_optimization_history(study, target_name=target_name),
                f"Optimization history of {target_name} ({direction})\n{counts}")
        if PARALLEL not in skipped:
            pngs[PARALLEL] = _optuna_png(
                lambda: ovm.plot_parallel_coordinate(study, target_name=target_name),
                f"{target_name} ({direction}) by hyperparameter, {counts}\n"
                f"None: the parameter was not sampled in that trial (conditional on another)")
    if IMPORTANCES not in skipped:
        goal = "the Pareto front" if multi else f"the top {IMPORTANCE_QUANTILE:.0%} of {target_name} ({direction})"
        pngs[IMPORTANCES] = _importances_png(study, trials, f"Importance for reaching {goal}\nPED-ANOVA, {counts}")
    # One order whichever plots were skipped: history, importances, parallel coordinates.
    return {name: pngs[name] for name in (HISTORY, IMPORTANCES, PARALLEL) if name in pngs}, skipped


def _importances_png(study: optuna.Study, trials: list[optuna.trial.FrozenTrial], title: str) -> bytes:
    """PED-ANOVA importances as horizontal bars, each parameter labelled with the trials it occurs in."""
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    # Drawn here rather than by Optuna's plot_param_importances: that one asserts an Agg-family pyplot canvas (it
    # fails under an explicit svg/pdf backend) and, for several objectives, scores each as if it were minimized.
    # PED-ANOVA itself is deterministic (Parzen estimators on a fixed grid, no random forest, no scikit-learn), and
    # scores a conditional parameter per regime: active with its distribution, or inactive.
    evaluator = PedAnovaImportanceEvaluator(target_quantile=IMPORTANCE_QUANTILE)
    importances = get_param_importances(study, evaluator=evaluator)
    names = list(importances)[::-1]  # barh draws bottom-up: the most important on top
    values = np.array([importances[n] for n in names])
    present = {n: sum(n in t.params for t in trials) for n in names}

    fig, ax = _figure()
    bars = ax.barh(range(len(names)), values, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3, fontsize="small")
    ax.set_yticks(range(len(names)), [f"{n} ({present[n]}/{len(trials)} trials)" for n in names])
    ax.set_xlim(0.0, max(1.15 * float(values.max()), 0.1))
    ax.set_xlabel("Importance (sums to 1)")
    ax.set_ylabel("Hyperparameter")
    if np.ptp(values) == 0.0 and len(names) > 1:
        # get_param_importances spreads the weight evenly when PED-ANOVA finds no difference at all.
        title += "\nall equal: nothing separates the best trials (too few, or a flat objective)"
    ax.set_title(title, fontsize="medium")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _select_headless_backend() -> None:
    # Optuna's plots draw through pyplot. A backend nobody has chosen yet would be auto-resolved at the first
    # figure, to a GUI one on a desktop; Agg is pinned in that case only, so an explicit choice (MPLBACKEND,
    # matplotlib.use, a notebook's inline backend) is left alone. Unresolved also means pyplot holds no figure
    # yet, so the switch closes nothing.
    try:
        chosen = matplotlib.get_backend(auto_select=False)
    except TypeError:  # matplotlib < 3.10
        chosen = matplotlib.rcParams._get_backend_or_none()
    if chosen is None:
        matplotlib.use("Agg")


def _optuna_png(draw: Callable[[], Axes], title: str) -> bytes:
    """Run one Optuna plot function under a local style, retitle its figure and render it; close what it opened."""
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    try:
        # rc_context undoes Optuna's plt.style.use("ggplot"), which would otherwise restyle every later figure
        # of the process.
        with matplotlib.rc_context({"figure.figsize": FIGSIZE, "figure.dpi": DPI}):
            ax = draw()
            fig = ax.figure
            # A figure title, not Optuna's axes title: the parallel-coordinate plot stacks one twin axes per
            # parameter, and an axes title there is clipped at the figure's edge.
            for loc in ("left", "center", "right"):
                ax.set_title("", loc=loc)
            fig.suptitle(title, fontsize="medium")
            fig.set_size_inches(*FIGSIZE)
            # Not "constrained": it divides by zero on the parallel-coordinate plot's twin axes.
            fig.set_layout_engine("tight")
            return _png(fig)
    finally:
        for num in set(plt.get_fignums()) - before:
            plt.close(num)


# ---- model plots (Figure + Agg, no pyplot) -----------------------------------------------------------------

def curves_plot(curves: Mapping[str, Mapping[str, Sequence[float]]], metric: str, *, title: str | None = None,
                mode: Literal["max", "min"] = "max") -> bytes:
    """Validation curves, one line per run, with a marker at each run's best epoch.

    Args:
        curves: Per label (e.g. ``"ladder_mtl seed 0"``), ``{"epoch": [...], metric: [...]}`` of equal length.
        metric: The key of the values to plot (e.g. ``"val_ccc_arousal"``).
        title: Figure title; defaults to ``"<metric> by epoch (star: <mode> of each run)"``.
        mode: Whether the best point is the maximum or the minimum (first one on ties).

    Returns:
        PNG bytes.

    Raises:
        ValueError: No curves; a curve without ``epoch`` or ``metric``, with lengths that differ, empty, or with
            non-finite values; ``mode`` not ``"max"``/``"min"``.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if not curves:
        raise ValueError("curves is empty; give at least one {label: {'epoch': [...], metric: [...]}}")
    series = []
    for label, curve in curves.items():
        missing = [k for k in ("epoch", metric) if k not in curve]
        if missing:
            raise ValueError(f"curve {label!r} lacks {missing}; it has {sorted(curve)}")
        x = np.asarray(curve["epoch"], dtype=np.float64).reshape(-1)
        y = np.asarray(curve[metric], dtype=np.float64).reshape(-1)
        if x.shape != y.shape:
            raise ValueError(f"curve {label!r}: 'epoch' and {metric!r} must have the same length, "
                             f"got {x.size} and {y.size}")
        if x.size == 0:
            raise ValueError(f"curve {label!r} is empty; a curve needs at least one epoch")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise ValueError(f"curve {label!r} holds non-finite values; the caller drops diverged epochs")
        series.append((str(label), x, y))

    fig, ax = _figure()
    pick = np.argmax if mode == "max" else np.argmin
    for label, x, y in series:
        i = int(pick(y))
        (line,) = ax.plot(x, y, marker="." if x.size < 50 else None, linewidth=1.3,
                          label=f"{label} ({mode} {y[i]:.4g} at epoch {x[i]:g})")
        ax.plot(x[i], y[i], marker="*", markersize=13, color=line.get_color(), markeredgecolor="black",
                markeredgewidth=0.6, linestyle="none", zorder=3)
    ax.set_xlabel("Epoch")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} by epoch (star: {mode} of each run)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return _png(fig)


def scatter_plot(pred: np.ndarray, true: np.ndarray, attribute: str, *, scale: tuple[float, float] | None = None,
                 title: str | None = None) -> bytes:
    """Predicted vs true values of one regression attribute, with the identity line; CCC and r in the title.

    Args:
        pred: (N,) predictions.
        true: (N,) ratings.
        attribute: The attribute's name (e.g. ``"arousal"``), for the axes.
        scale: The corpus's rating scale ``(low, high)``, e.g. ``(1, 7)``; both axes are limited to it (the
            legend counts predictions outside it). Default: the data's range.
        title: First title line; defaults to ``"Predicted vs true <attribute>"``.

    Returns:
        PNG bytes.

    Raises:
        ValueError: Empty, unequal-length or non-finite inputs; ``scale`` with ``low >= high``.
    """
    from trainables import metrics as M  # here, not at the top: it loads torch, which the search plots never need

    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    t = np.asarray(true, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(p)):
        raise ValueError(f"pred holds {int(np.sum(~np.isfinite(p)))} non-finite values; the plot needs finite "
                         f"predictions")
    ccc, r = M.ccc(p, t), M.pearson_r(p, t)  # these check emptiness, lengths and finite targets
    if scale is not None:
        lo, hi = (float(v) for v in scale)
        if not lo < hi:
            raise ValueError(f"scale must be (low, high) with low < high, got {scale!r}")
    else:
        lo, hi = float(min(p.min(), t.min())), float(max(p.max(), t.max()))
        pad = 0.05 * (hi - lo) if hi > lo else 0.5
        lo, hi = lo - pad, hi + pad

    fig, ax = _figure()
    ax.scatter(t, p, s=10, alpha=0.4 if p.size > 200 else 0.7, edgecolors="none", label=f"{p.size} samples")
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, linestyle="--", label="identity (pred = true)")
    if scale is not None:
        outside = int(np.sum((p < lo) | (p > hi)))
        if outside:
            ax.plot([], [], linestyle="none", label=f"{outside} predictions outside the scale (not shown)")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(f"True {attribute}")
    ax.set_ylabel(f"Predicted {attribute}")
    ax.set_title(f"{title or f'Predicted vs true {attribute}'}\nCCC = {ccc:.3f}, Pearson r = {r:.3f}",
                 fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    return _png(fig)


def confusion_plot(pred: np.ndarray, true: np.ndarray, class_names: Sequence[str], *, title: str | None = None,
                   normalize: bool = True) -> bytes:
    """Confusion matrix (rows = true class, columns = predicted class) with counts and fractions in the cells.

    Args:
        pred: (N,) predicted class indices in ``[0, len(class_names))``.
        true: (N,) true class indices, same range.
        class_names: Name of each class index, for both axes.
        title: First title line; defaults to ``"Confusion matrix"``. The second line gives UA (mean recall over the
            classes present in ``true``, as logged), WA and N.
        normalize: Colour and annotate each cell by its fraction of the row (the class's recall on the
            diagonal); otherwise by its count. A class never true has an empty row, annotated "-".

    Returns:
        PNG bytes.

    Raises:
        ValueError: No class names; empty, unequal-length or non-integer inputs; an index outside the classes.
    """
    from trainables import metrics as M  # loads torch; see scatter_plot

    names = [str(c) for c in class_names]
    k = len(names)
    if k == 0:
        raise ValueError("class_names is empty; give the name of each class index")
    for name, arr in (("pred", pred), ("true", true)):
        a = np.asarray(arr)
        if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.any(a != np.round(a)):
            raise ValueError(f"{name} must hold integer class indices, got fractional values such as "
                             f"{a[a != np.round(a)][0]}")
    counts = M.confusion_matrix(pred, true, k)  # checks emptiness, lengths, finiteness and the index range
    ua, wa = M.unweighted_accuracy(pred, true), M.weighted_accuracy(pred, true)
    rows = counts.sum(axis=1, keepdims=True)
    frac = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    shown = frac if normalize else counts.astype(np.float64)
    vmax = 1.0 if normalize else max(float(counts.max()), 1.0)

    fig, ax = _figure()
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(im, ax=ax, label="fraction of the true class" if normalize else "count")
    fontsize = "medium" if k <= 6 else "small" if k <= 10 else "x-small"
    for i in range(k):
        for j in range(k):
            if rows[i, 0] == 0:  # a class never true has no fractions; "0.00" would read as a recall of 0
                text = "-\n(0)" if normalize else "0\n-"
            elif normalize:
                text = f"{frac[i, j]:.2f}\n({counts[i, j]})"
            else:
                text = f"{counts[i, j]}\n{frac[i, j]:.0%}"
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                    color="white" if shown[i, j] > 0.5 * vmax else "black")
    slanted = max(map(len, names)) > 4  # long names would overlap side by side
    ax.set_xticks(range(k), names, rotation=30 if slanted else 0, ha="right" if slanted else "center")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    kind = "row-normalised" if normalize else "counts"
    ax.set_title(f"{title or 'Confusion matrix'} ({kind})\nUA = {ua:.3f}, WA = {wa:.3f}, N = {int(counts.sum())}",
                 fontsize="medium")
    return _png(fig)


# ---- rendering ---------------------------------------------------------------------------------------------

def _figure() -> tuple[Figure, Axes]:
    """A 7 x 4.5 in figure on the Agg canvas with one axes; pyplot never sees it."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


TSNE_POINTS_PER_CLASS = 250  # the center-loss paper's Figures 2-3: "randomly selected 250 points from each class"


def sample_per_class(labels: np.ndarray, per_class: int = TSNE_POINTS_PER_CLASS, seed: int = 0) -> np.ndarray:
    """Indices of at most ``per_class`` random points of each class (all of a smaller class), sorted."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.append(idx if len(idx) <= per_class else rng.choice(idx, per_class, replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def tsne_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (scikit-learn, PCA initialisation) of ``(N, D)`` features; perplexity capped for small N."""
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64)
    if len(x) < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {len(x)}")
    perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def tsne_plot(panels: Mapping[str, tuple[np.ndarray, np.ndarray]], class_names: Sequence[str], *,
              title: str, per_class: int = TSNE_POINTS_PER_CLASS, seed: int = 0) -> bytes:
    """Side-by-side 2-D t-SNE maps of hidden features coloured by class (the center-loss paper's Figures 2-3).

    Args:
        panels: ``{panel title: (features (N, D), class indices (N,))}``, e.g. ``{"S": ..., "S+C": ...}``.
        class_names: Name of each class index.
        title: Figure title.
        per_class: Random points per class drawn from each panel's features (all when a class has fewer).
        seed: Seeds the sampling and t-SNE, so the figure is reproducible.

    Returns:
        PNG bytes.

    Raises:
        ValueError: No panel, or a panel with fewer than 3 points or mismatched lengths.
    """
    if not panels:
        raise ValueError("tsne_plot needs at least one panel")
    n = len(panels)
    fig = Figure(figsize=(3.6 * n + 0.6, 4.0), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    colours = matplotlib.colormaps["tab10"]
    for ax, (name, (features, labels)) in zip(axes, panels.items(), strict=True):
        features, labels = np.asarray(features), np.asarray(labels).astype(int)
        if len(features) != len(labels):
            raise ValueError(f"panel {name!r}: {len(features)} feature rows but {len(labels)} labels")
        idx = sample_per_class(labels, per_class, seed)
        xy = tsne_embedding(features[idx], seed)
        for c in np.unique(labels[idx]):
            sel = labels[idx] == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=8, color=colours(int(c) % 10),
                       label=class_names[c] if c < len(class_names) else str(c))
        ax.set_title(f"{name} (n={len(idx)})")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[-1].legend(loc="best", fontsize=8, markerscale=1.5)
    fig.suptitle(title)
    return _png(fig)
