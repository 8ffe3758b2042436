"""Evaluation metrics shared by every family (NumPy/SciPy), plus the CCC training loss (torch).

Conventions: ``pred`` and ``target`` are 1-D arrays of equal length; class metrics take integer labels.
Degenerate inputs are defined: a correlation whose denominator is 0 (a constant series) is 0, because a constant
prediction carries no information about the target's variation. Non-finite inputs never become a number: a NaN or
infinite prediction gives NaN (the loop then fails the trial), a NaN or infinite target raises ``ValueError`` (a
data error). Empty inputs raise ``ValueError``.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import stats

__all__ = ["ccc", "pearson_r", "unweighted_accuracy", "weighted_accuracy", "macro_f1", "confusion_matrix",
           "fuzzy_unweighted_accuracy", "expected_level", "eer", "verification_trials", "welch_one_tailed",
           "ccc_loss"]


def _pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    t = np.asarray(target, dtype=np.float64).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same length, got {p.shape[0]} and {t.shape[0]}")
    if p.size == 0:
        raise ValueError("pred and target are empty; a metric needs at least one row")
    if not np.all(np.isfinite(t)):
        raise ValueError(f"target holds {int(np.sum(~np.isfinite(t)))} non-finite values; labels must be finite "
                         f"(re-ingest the shards: ingest quarantines non-finite labels)")
    return p, t


def _finite(p: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(p)))


def _labels(pred, target) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred).reshape(-1)
    t = np.asarray(target).reshape(-1)
    for name, arr in (("pred", p), ("target", t)):
        if arr.dtype.kind == "f" and not _finite(arr):
            raise ValueError(f"{name} class labels hold non-finite values; class labels are integers")
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same length, got {p.shape[0]} and {t.shape[0]}")
    if p.size == 0:
        raise ValueError("pred and target are empty; a metric needs at least one row")
    return p.astype(np.int64), t.astype(np.int64)


# ---- regression --------------------------------------------------------------------------------------------

def ccc(pred, target) -> float:
    """Lin's concordance correlation coefficient, with population (1/N) moments.

    ``CCC = 2 cov(p, t) / (var(p) + var(t) + (mean(p) - mean(t))^2)``. The denominator is 0 only when both
    series are constant and equal; CCC is then defined as 0 (no variation to agree on), like any constant
    prediction against a varying target, whose covariance is 0.

    Returns:
        CCC in [-1, 1].
    """
    p, t = _pair(pred, target)
    if not _finite(p):
        return float("nan")
    mp, mt = p.mean(), t.mean()
    cov = np.mean((p - mp) * (t - mt))
    denom = p.var() + t.var() + (mp - mt) ** 2
    return float(2.0 * cov / denom) if denom > 0 else 0.0


def pearson_r(pred, target) -> float:
    """Pearson correlation ``r = cov(p, t) / (std(p) std(t))``; 0 when either series is constant.

    Returns:
        r in [-1, 1].
    """
    p, t = _pair(pred, target)
    if not _finite(p):
        return float("nan")
    dp, dt = p - p.mean(), t - t.mean()
    denom = np.sqrt(np.sum(dp * dp) * np.sum(dt * dt))
    return float(np.clip(np.sum(dp * dt) / denom, -1.0, 1.0)) if denom > 0 else 0.0


# ---- classification ----------------------------------------------------------------------------------------

def confusion_matrix(pred, target, n_classes: int) -> np.ndarray:
    """Counts ``M[i, j]`` of rows whose true class is ``i`` and predicted class is ``j`` (rows: truth).

    Raises:
        ValueError: A label outside ``[0, n_classes)``.
    """
    p, t = _labels(pred, target)
    for name, arr in (("pred", p), ("target", t)):
        if arr.min() < 0 or arr.max() >= n_classes:
            raise ValueError(f"{name} labels must lie in [0, {n_classes}), "
                             f"got range [{arr.min()}, {arr.max()}]")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def weighted_accuracy(pred, target) -> float:
    """WA = accuracy = ``(1/N) sum_n [pred_n == target_n]`` (classes weighted by their frequency)."""
    p, t = _labels(pred, target)
    return float(np.mean(p == t))


def unweighted_accuracy(pred, target) -> float:
    """UA = macro recall ``(1/|K|) sum_{k in K} TP_k / N_k`` over the classes ``K`` present in ``target``.

    Classes absent from ``target`` have no recall and are left out (they would otherwise count as 0 or 1).
    """
    p, t = _labels(pred, target)
    classes = np.unique(t)
    return float(np.mean([np.mean(p[t == k] == k) for k in classes]))


def macro_f1(pred, target) -> float:
    """Macro F1 ``(1/|K|) sum_k 2 TP_k / (2 TP_k + FP_k + FN_k)`` over the classes in ``pred`` or ``target``.

    A class that is predicted but never true (or true but never predicted) has F1 = 0, as in scikit-learn.
    """
    p, t = _labels(pred, target)
    scores = []
    for k in np.union1d(p, t):
        tp = np.sum((p == k) & (t == k))
        fp = np.sum((p == k) & (t != k))
        fn = np.sum((p != k) & (t == k))
        scores.append(2.0 * tp / (2.0 * tp + fp + fn))
    return float(np.mean(scores))


def _distributions(dist, name: str) -> np.ndarray:
    d = np.asarray(dist, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] == 0 or d.shape[1] < 2:
        raise ValueError(f"{name} must be a non-empty (N, C) array of distributions with C >= 2, got shape {d.shape}")
    return d


def fuzzy_unweighted_accuracy(pred, soft_target, pool=None, tol: float = 1e-6) -> float:
    """UA over soft labels that accepts every label of a perfect rater tie (arXiv 1705.02394, "Evaluation Strategy").

    A row's true classes ``T_n`` are the maxima of its soft label (within ``tol``): one class, or two or more when the
    raters were split evenly (4.5 -> ``{4, 5}``); predicting any of them is correct. A row belongs to each of its
    classes with weight ``1 / |T_n|``, whatever the prediction, so the classes' sizes do not depend on the model:
    ``recall_k = sum_n w_nk [pred_n in T_n] / sum_n w_nk`` over the classes with rows, and UA is their mean. Without
    ties this is :func:`unweighted_accuracy` of the soft labels' argmax.

    Args:
        pred: (N,) predicted class indices in ``[0, C)``.
        soft_target: (N, C) label distributions (e.g. the ``soft5`` encoder's).
        pool: Optional class map of length C onto pooled classes, applied to predictions and true classes alike (the
            paper's 3-point scale: ``(0, 0, 1, 2, 2)`` pools levels 1-2 / 3 / 4-5).
        tol: How close to the maximum a label's entry must be to count as tied.

    Raises:
        ValueError: Non-finite, negative or all-zero soft labels, a bad shape, a prediction or pool outside range.
    """
    y = _distributions(soft_target, "soft_target")
    p = np.asarray(pred).reshape(-1)
    if p.dtype.kind == "f" and not _finite(p):
        raise ValueError("pred class labels hold non-finite values; class labels are integers")
    if len(p) != len(y):
        raise ValueError(f"pred and soft_target must have the same length, got {len(p)} and {len(y)}")
    p = p.astype(np.int64)
    if not np.all(np.isfinite(y)) or (y < 0).any() or not (y.sum(axis=1) > 0).all():
        raise ValueError("soft_target rows must be finite, non-negative and not all zero (pass labelled rows only)")
    n_classes = y.shape[1]
    if p.min() < 0 or p.max() >= n_classes:
        raise ValueError(f"pred must lie in [0, {n_classes}), got range [{p.min()}, {p.max()}]")
    tied = y >= y.max(axis=1, keepdims=True) - tol  # (N, C) the true classes of each row
    if pool is not None:
        pool = np.asarray(pool, dtype=np.int64).reshape(-1)
        if len(pool) != n_classes or pool.min() < 0:
            raise ValueError(f"pool must map each of the {n_classes} classes to a pooled class >= 0, got "
                             f"{pool.tolist()}")
        onto = np.zeros((n_classes, int(pool.max()) + 1), dtype=bool)
        onto[np.arange(n_classes), pool] = True
        tied, p = (tied.astype(np.int64) @ onto) > 0, pool[p]
    correct = tied[np.arange(len(p)), p]  # (N,)
    weight = tied / tied.sum(axis=1, keepdims=True)  # (N, K)
    size = weight.sum(axis=0)
    present = size > 0
    return float(np.mean((weight * correct[:, None]).sum(axis=0)[present] / size[present]))


def expected_level(dist, levels=None) -> np.ndarray:
    """``sum_k level_k p_k`` per row (arXiv 1705.02394: a predicted 5-level distribution back to a rating).

    Applied to a ``soft5`` label it gives back the mean rating it encodes (4.5 -> ``[0, 0, 0, .5, .5]`` -> 4.5).

    Args:
        dist: (N, C) distributions.
        levels: (C,) the value of each class; default ``1 .. C``.

    Returns:
        (N,) float64; NaN where a row is not finite.
    """
    d = _distributions(dist, "dist")
    values = np.arange(1, d.shape[1] + 1, dtype=np.float64) if levels is None else np.asarray(levels, np.float64)
    if values.shape != (d.shape[1],):
        raise ValueError(f"levels must have one value per class ({d.shape[1]}), got shape {values.shape}")
    return d @ values


# ---- speaker verification ----------------------------------------------------------------------------------

def eer(scores, labels) -> float:
    """Equal error rate of verification trials: the rate where false acceptance equals false rejection.

    Accepting trials with score >= threshold, ``FAR(th) = #{non-target >= th} / N_non`` and
    ``FRR(th) = #{target < th} / N_target``. Sweeping the threshold down through the distinct scores gives a
    piecewise-linear (FAR, FRR) curve from (0, 1) to (1, 0); the EER is where it crosses FAR = FRR, linearly
    interpolated between the two operating points around the crossing.

    Args:
        scores: (N,) trial scores, higher = more likely the same speaker.
        labels: (N,) 1 for a target (same-speaker) trial, 0 for a non-target trial.

    Raises:
        ValueError: Labels other than 0/1, or no trial of one kind.
    """
    s, y = _pair(scores, labels)
    if not _finite(s):
        return float("nan")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"labels must be 0 or 1, got values {np.unique(y)[:5]}")
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"EER needs target and non-target trials, got {n_pos} target and {n_neg} non-target")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # Operating points: accept the top k trials, cutting only between distinct scores (ties move together).
    cut = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp = np.r_[0.0, np.cumsum(y)[cut]]
    fp = np.r_[0.0, np.cumsum(1.0 - y)[cut]]
    far, frr = fp / n_neg, 1.0 - tp / n_pos
    d = frr - far  # decreasing from 1 to -1
    i = int(np.argmax(d <= 0))
    if d[i] == 0 or i == 0:
        return float(far[i])
    w = d[i - 1] / (d[i - 1] - d[i])
    return float(far[i - 1] + w * (far[i] - far[i - 1]))


def verification_trials(embeddings, speakers, enrol: int, order=None) -> tuple[np.ndarray, np.ndarray]:
    """Cosine-scored speaker verification trials of utterance embeddings (d-vectors, Variani et al. 2014; the
    semi-supervised AAE paper, Section 6.2: "20 utterances of speakers for enrolment and remaining for evaluation").

    Per speaker, its utterances sorted by ``order`` (then by position), the first ``min(enrol, n // 2)`` enrol and
    the rest are trials, so a speaker with fewer than ``2 * enrol`` utterances keeps half of them (at least one) for
    trials; a speaker with one utterance is left out. The speaker model is the mean of its enrolment embeddings.
    Every trial is scored against every speaker model by cosine similarity (0 against a zero vector): one target
    trial (its own speaker) and one non-target trial per other speaker.

    Args:
        embeddings: (N, H) one embedding per utterance.
        speakers: (N,) speaker identities (any hashable values; ``corpus/speaker`` across corpora).
        enrol: Enrolment utterances per speaker (>= 1).
        order: (N,) sort keys (e.g. utterance ids) that decide which utterances enrol; None keeps the given order.

    Returns:
        ``(scores, is_target)``: (K,) float64 cosine scores and (K,) int64 1 for target, 0 for non-target trials;
        both empty when fewer than two speakers have two utterances.

    Raises:
        ValueError: Mismatched lengths, non-finite embeddings, or ``enrol < 1``.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or len(emb) != len(speakers) or (order is not None and len(order) != len(emb)):
        raise ValueError(f"embeddings must be (N, H) with one speaker (and order key) per row, got shape {emb.shape}, "
                         f"{len(speakers)} speakers" + ("" if order is None else f", {len(order)} order keys"))
    if not _finite(emb):
        raise ValueError("embeddings hold non-finite values")
    if enrol < 1:
        raise ValueError(f"enrol >= 1 must hold, got {enrol}")
    keys = list(range(len(emb))) if order is None else [(str(k), i) for i, k in enumerate(order)]
    by_speaker: dict = {}
    for i in sorted(range(len(emb)), key=lambda i: keys[i]):
        by_speaker.setdefault(speakers[i], []).append(i)
    models, trials = [], []
    for rows in by_speaker.values():
        if len(rows) < 2:
            continue
        k = min(enrol, len(rows) // 2)
        models.append(emb[rows[:k]].mean(axis=0))
        trials += [(i, len(models) - 1) for i in rows[k:]]
    if len(models) < 2:
        return np.zeros(0), np.zeros(0, dtype=np.int64)

    def unit(v: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(v, axis=-1, keepdims=True)
        return np.divide(v, norm, out=np.zeros_like(v), where=norm > 0)

    rows = np.array([i for i, _ in trials])
    own = np.array([m for _, m in trials])
    scores = unit(emb[rows]) @ unit(np.stack(models)).T  # (trials, speakers)
    is_target = np.zeros_like(scores, dtype=np.int64)
    is_target[np.arange(len(rows)), own] = 1
    return scores.reshape(-1), is_target.reshape(-1)


# ---- significance ------------------------------------------------------------------------------------------

def welch_one_tailed(a, b) -> tuple[float, float]:
    """One-tailed Welch t-test of ``mean(a) > mean(b)`` (unequal variances), as in the ladder paper's Table 1.

    ``t = (mean(a) - mean(b)) / sqrt(s_a^2 / n_a + s_b^2 / n_b)`` with sample variances (ddof 1) and
    Welch-Satterthwaite degrees of freedom; ``p = P(T_df >= t)``.

    Returns:
        ``(t, p)``; a variant beats the baseline when ``p < 0.05``.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"Welch's t-test needs at least 2 values per group, got {a.size} and {b.size}")
    with warnings.catch_warnings():  # two seeds with equal scores (a 0.333 UA twice): scipy's precision warning
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
    return float(res.statistic), float(res.pvalue)


# ---- training loss -----------------------------------------------------------------------------------------

def ccc_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
             eps: float = 1e-8) -> torch.Tensor:
    """``1 - CCC(pred, target)`` over the rows where ``mask`` is True (Trigeorgis et al.'s training loss).

    Population moments as in :func:`ccc`. The denominator is clamped at ``eps`` so both series constant gives
    CCC 0 (loss 1) with finite gradients, matching :func:`ccc`.

    Args:
        pred: (B,) predictions.
        target: (B,) labels (values under a False mask are ignored, whatever they are).
        mask: (B,) bool, True where the row has a label; None means all rows.
        eps: Floor of the denominator.

    Returns:
        Scalar loss in [0, 2]. With fewer than 2 labelled rows CCC is undefined; the loss is then a 0 that is
        still attached to ``pred``'s graph, so ``backward`` runs and gives zero gradients.
    """
    pred, target = pred.reshape(-1), target.reshape(-1).to(pred.dtype)
    if mask is not None:
        mask = mask.reshape(-1).bool()
        pred, target = pred[mask], target[mask]
    if pred.numel() < 2:
        return pred.sum() * 0.0
    mp, mt = pred.mean(), target.mean()
    cov = ((pred - mp) * (target - mt)).mean()
    denom = pred.var(unbiased=False) + target.var(unbiased=False) + (mp - mt) ** 2
    return 1.0 - 2.0 * cov / denom.clamp_min(eps)
