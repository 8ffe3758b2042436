"""Metrics against values worked out by hand from their formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from trainables import metrics as M

# ---- CCC / Pearson -----------------------------------------------------------------------------------------

def test_ccc_hand_computed():
    # pred [1,2,3], target [2,4,6]: means 2 and 4; population variances 2/3 and 8/3; cov = (2+0+2)/3 = 4/3.
    # CCC = 2 * 4/3 / (2/3 + 8/3 + (2 - 4)^2) = (8/3) / (22/3) = 4/11.
    assert M.ccc([1, 2, 3], [2, 4, 6]) == pytest.approx(4 / 11)
    # Perfect agreement and perfect reversal: cov = -2/3, denominator 2/3 + 2/3 + 0 -> -1.
    assert M.ccc([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert M.ccc([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # A shift costs agreement: pred = target + 1 -> 2 * 2/3 / (2/3 + 2/3 + 1) = 4/7.
    assert M.ccc([2, 3, 4], [1, 2, 3]) == pytest.approx(4 / 7)


def test_ccc_degenerate_inputs_are_zero_not_nan():
    assert M.ccc([2, 2, 2], [1, 2, 3]) == 0.0  # constant prediction: cov 0, denominator 2/3 + 1
    assert M.ccc([1, 1], [1, 1]) == 0.0  # denominator 0: defined as 0
    assert M.pearson_r([2, 2, 2], [1, 2, 3]) == 0.0
    with pytest.raises(ValueError, match="empty"):
        M.ccc([], [])
    with pytest.raises(ValueError, match="same length"):
        M.ccc([1, 2], [1, 2, 3])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_predictions_never_become_a_number(bad):
    assert np.isnan(M.ccc([1.0, bad, 3.0], [1, 2, 3]))
    assert np.isnan(M.pearson_r([1.0, bad, 3.0], [1, 2, 3]))
    assert np.isnan(M.eer([0.1, bad, 0.9, 0.2], [0, 1, 1, 0]))
    with pytest.raises(ValueError, match="non-finite"):
        M.ccc([1, 2, 3], [1.0, bad, 3.0])  # a non-finite label is a data error
    with pytest.raises(ValueError, match="non-finite"):
        M.unweighted_accuracy(np.array([0.0, bad]), [0, 1])


def test_pearson_hand_computed():
    # Deviations [-1.5, -.5, .5, 1.5] and [-1.5, .5, -.5, 1.5]: sum of products 4, sums of squares 5 and 5.
    assert M.pearson_r([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert M.pearson_r([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)  # scale-invariant, unlike CCC (4/11)


# ---- classification ----------------------------------------------------------------------------------------

def test_ua_vs_wa_on_imbalanced_classes():
    target = [0] * 8 + [1] * 2
    pred = [0] * 10  # the majority-class predictor
    assert M.weighted_accuracy(pred, target) == pytest.approx(0.8)  # 8 of 10 right
    assert M.unweighted_accuracy(pred, target) == pytest.approx(0.5)  # recalls 1 and 0
    # F1: class 0 has TP 8, FP 2, FN 0 -> 16/18; class 1 has TP 0 -> 0; macro = 4/9.
    assert M.macro_f1(pred, target) == pytest.approx(4 / 9)


def test_ua_uses_classes_in_target_and_f1_the_union():
    target, pred = [0, 0, 1, 1], [0, 2, 1, 1]
    assert M.unweighted_accuracy(pred, target) == pytest.approx(0.75)  # (1/2 + 2/2) / 2; class 2 not true
    # F1 over {0, 1, 2}: 2/(2+0+1) = 2/3, 4/4 = 1, 0/(0+1+0) = 0 -> 5/9.
    assert M.macro_f1(pred, target) == pytest.approx(5 / 9)


def test_confusion_matrix_rows_are_truth():
    cm = M.confusion_matrix([0, 1, 1, 0], [0, 0, 1, 2], n_classes=3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        M.confusion_matrix([0, 3], [0, 1], n_classes=3)


# ---- EER ---------------------------------------------------------------------------------------------------

def test_eer_separable_is_zero():
    assert M.eer([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0]) == 0.0


def test_eer_known_overlap():
    # Sorted: .9T .8T .7N .4T .3N .2N. Accepting the top 4: FAR = 1/3 (the .7), FRR = 0; top 3: FAR 1/3,
    # FRR 1/3 (the .4) -> the curve meets FAR = FRR at 1/3.
    assert M.eer([0.9, 0.8, 0.4, 0.7, 0.3, 0.2], [1, 1, 1, 0, 0, 0]) == pytest.approx(1 / 3)


def test_eer_interpolates_across_a_tie():
    # Targets [2, 1], non-targets [1, 0]. Operating points (FAR, FRR): (0, 1), (0, .5) at th=2, (.5, 0) at
    # th=1 (the tie moves together). The segment (0, .5)-(.5, 0) crosses FAR = FRR at .25.
    assert M.eer([2, 1, 1, 0], [1, 1, 0, 0]) == pytest.approx(0.25)
    assert M.eer([0.0, 1.0], [1, 0]) == pytest.approx(1.0)  # every target below every non-target


def test_eer_rejects_one_sided_trials():
    with pytest.raises(ValueError, match="target and non-target"):
        M.eer([0.1, 0.2], [1, 1])


# ---- Welch -------------------------------------------------------------------------------------------------

def test_welch_one_tailed_hand_computed():
    a, b = [1, 2, 3], [0, 0, 1]
    # means 2 and 1/3; sample variances 1 and 1/3; se = sqrt(1/3 + 1/9) = 2/3; t = (5/3) / (2/3) = 2.5.
    # Welch df = (4/9)^2 / ((1/3)^2/2 + (1/9)^2/2) = (16/81) / (10/162) = 3.2.
    t, p = M.welch_one_tailed(a, b)
    assert t == pytest.approx(2.5)
    assert p == pytest.approx(stats.t.sf(2.5, 3.2))
    assert 0.02 < p < 0.05  # significant at 0.05, as the paper's asterisks ask
    t_rev, p_rev = M.welch_one_tailed(b, a)
    assert t_rev == pytest.approx(-2.5) and p_rev == pytest.approx(1 - p)


# ---- ccc_loss ----------------------------------------------------------------------------------------------

def test_ccc_loss_agrees_with_one_minus_ccc():
    g = np.random.default_rng(0)
    p, t = g.standard_normal(50), g.standard_normal(50) + 0.5 * g.standard_normal(50)
    loss = M.ccc_loss(torch.tensor(p), torch.tensor(t))
    assert float(loss) == pytest.approx(1 - M.ccc(p, t), abs=1e-9)
    small = M.ccc_loss(torch.tensor([1.0, 2, 3]), torch.tensor([2.0, 4, 6]))
    assert small.item() == pytest.approx(1 - 4 / 11)


def test_ccc_loss_mask_ignores_unlabelled_rows():
    p = torch.tensor([1.0, 2.0, 3.0, 100.0])
    t = torch.tensor([2.0, 4.0, 6.0, float("nan")])  # the unlabelled row's value is garbage
    mask = torch.tensor([True, True, True, False])
    assert float(M.ccc_loss(p, t, mask)) == pytest.approx(1 - 4 / 11)


def test_ccc_loss_degenerate_cases_are_grad_safe():
    p = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    t = torch.tensor([1.0, 2.0, 3.0])
    loss = M.ccc_loss(p, t, torch.tensor([True, False, False]))  # one labelled row: CCC undefined
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(p.grad, torch.zeros(3))
    empty = M.ccc_loss(p, t, torch.zeros(3, dtype=torch.bool))
    assert empty.item() == 0.0
    const = torch.ones(3, requires_grad=True)
    loss = M.ccc_loss(const, torch.ones(3))  # both constant: CCC 0 -> loss 1, finite gradients
    loss.backward()
    assert loss.item() == pytest.approx(1.0) and torch.isfinite(const.grad).all()


def test_ccc_loss_gradient_is_correct():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(12, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(12, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda x: M.ccc_loss(x, t), (p,))
