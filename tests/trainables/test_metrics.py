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


# ---- fuzzy labels (multitask-DCGAN paper, arXiv 1705.02394) --------------------------------------------------

FUZZY = np.array([[0, 0, 0, 0.5, 0.5],  # a rating of 4.5: levels 4 and 5 both correct
                  [0, 0, 0, 1.0, 0],
                  [0, 0, 0, 1.0, 0],
                  [0, 0.5, 0.5, 0, 0],  # 2.5: levels 2 and 3
                  [0, 0, 1.0, 0, 0]])
FUZZY_PRED = np.array([4, 3, 2, 0, 2])  # level 5, 4, 3, 1, 3 (0-based indices)


def test_fuzzy_ua_accepts_either_label_of_a_tie():
    # A tied row counts 1/2 towards each of its levels; it is correct for both when the prediction is either.
    # level 2: row 3 (1/2, wrong) -> 0; level 3: row 3 (1/2, wrong), row 4 (1, right) -> 1 / 1.5;
    # level 4: row 0 (1/2, right), row 1 (right), row 2 (wrong) -> 1.5 / 2.5; level 5: row 0 (1/2, right) -> 1.
    expected = (0 + 2 / 3 + 0.6 + 1) / 4
    assert M.fuzzy_unweighted_accuracy(FUZZY_PRED, FUZZY) == pytest.approx(expected)
    # The hard argmax (the first of a tie) would call row 0 level 4 and row 3 level 2: UA 4/9 instead.
    assert M.unweighted_accuracy(FUZZY_PRED, FUZZY.argmax(axis=1)) == pytest.approx(4 / 9)
    assert M.fuzzy_unweighted_accuracy(np.array([3, 3, 3, 1, 2]), FUZZY) == pytest.approx(1.0)


def test_fuzzy_ua_without_ties_is_plain_ua():
    g = np.random.default_rng(0)
    truth, pred = g.integers(0, 5, 40), g.integers(0, 5, 40)
    soft = np.eye(5)[truth] * 0.7 + 0.3 * np.eye(5)[(truth + 1) % 5]  # unequal mass: no tie
    assert M.fuzzy_unweighted_accuracy(pred, soft) == pytest.approx(M.unweighted_accuracy(pred, truth))


def test_fuzzy_ua_pooled_to_three_classes():
    # Pooled 1-2 / 3 / 4-5: row 2 (level 4 -> positive, predicted 3 -> neutral) is the only miss; row 3's tie
    # {2, 3} becomes {negative, neutral} and its prediction 1 -> negative is right.
    # negative: row 3 (1/2, right) -> 1; neutral: row 3 (1/2, right), row 4 (right) -> 1; positive: 2 of 3.
    assert M.fuzzy_unweighted_accuracy(FUZZY_PRED, FUZZY, pool=(0, 0, 1, 2, 2)) == pytest.approx((1 + 1 + 2 / 3) / 3)


def test_expected_level_recovers_the_mean_rating():
    assert M.expected_level(FUZZY).tolist() == pytest.approx([4.5, 4.0, 4.0, 2.5, 3.0])
    assert M.expected_level(np.full((1, 5), 0.2)).tolist() == pytest.approx([3.0])
    assert M.expected_level(np.array([[0.5, 0.5]]), levels=[-1, 1]).tolist() == [0.0]
    post = np.array([[0.1, 0.2, 0.3, 0.3, 0.1], [0.6, 0.2, 0.1, 0.1, 0.0], [0.0, 0.0, 0.2, 0.3, 0.5]])
    # 0.1 + 0.4 + 0.9 + 1.2 + 0.5 = 3.1; 0.6 + 0.4 + 0.3 + 0.4 = 1.7; 0.6 + 1.2 + 2.5 = 4.3
    assert M.expected_level(post).tolist() == pytest.approx([3.1, 1.7, 4.3])
    assert M.pearson_r(M.expected_level(post), M.expected_level(FUZZY[[0, 3, 4]])) == pytest.approx(
        stats.pearsonr([3.1, 1.7, 4.3], [4.5, 2.5, 3.0])[0])


@pytest.mark.parametrize("pred, soft, pool, match", [
    ([0, 1], [[1.0, 0], [float("nan"), 1]], None, "finite, non-negative"),
    ([0, 1], [[1.0, 0], [0, 0]], None, "not all zero"),
    ([0.0, float("nan")], [[1.0, 0], [0, 1]], None, "non-finite"),
    ([0], [[1.0, 0], [0, 1]], None, "same length"),
    ([0, 2], [[1.0, 0], [0, 1]], None, r"pred must lie in \[0, 2\)"),
    ([0, 1], [[1.0, 0], [0, 1]], (0,), "pool must map each of the 2 classes"),
    ([0, 1], [1.0, 0], None, r"\(N, C\)"),
])
def test_fuzzy_ua_rejects_bad_input(pred, soft, pool, match):
    with pytest.raises(ValueError, match=match):
        M.fuzzy_unweighted_accuracy(np.asarray(pred), np.asarray(soft), pool=pool)


def test_expected_level_of_non_finite_posteriors_is_nan():
    assert np.isnan(M.expected_level(np.array([[0.5, float("nan")]]))[0])
    with pytest.raises(ValueError, match="one value per class"):
        M.expected_level(np.eye(3), levels=[1, 2])


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


# ---- speaker verification trials (d-vectors, cosine scores) ------------------------------------------------

def test_verification_trials_by_hand():
    # Speaker a: 3 utterances, so min(5, 3 // 2) = 1 enrols (a1 = [2, 0]) and a2, a3 are trials; speaker b: 2, so
    # b1 = [0, 3] enrols and b2 is a trial. Unit vectors: a2 [0, 1], a3 and b2 [.707, .707]; models a [1, 0], b [0, 1].
    emb = [[0, 2], [2, 0], [1, 1], [0, 3], [3, 3]]
    speakers = ["a", "a", "a", "b", "b"]
    order = ["a2", "a1", "a3", "b1", "b2"]  # the first utterance by id enrols, not the first row
    scores, is_target = M.verification_trials(emb, speakers, enrol=5, order=order)
    r = np.sqrt(0.5)
    np.testing.assert_allclose(scores, [0, 1, r, r, r, r], atol=1e-12)  # trials a2, a3, b2 against models a, b
    assert is_target.tolist() == [1, 0, 1, 0, 0, 1]
    # Targets score {0, r, r} and non-targets {1, r, r}: FAR 1/3 at FRR 1 and FAR 1 at FRR 1/3 cross at 2/3.
    assert M.eer(scores, is_target) == pytest.approx(2 / 3)
    # Without order keys the rows' order decides: a's first row [0, 2] enrols, so a's model is [0, 1] like b's.
    scores, _ = M.verification_trials(emb, speakers, enrol=5)
    np.testing.assert_allclose(scores[:2], [0, 0], atol=1e-12)  # trial [2, 0] against models [0, 1] and [0, 1]


def test_verification_trials_enrol_at_most_half_and_skip_lone_speakers():
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 5
    speakers = ["a"] * 10 + ["b"] * 4 + ["c"]
    emb = np.array([centres["abc".index(s)] + rng.normal(0, 0.1, 3) for s in speakers])
    scores, is_target = M.verification_trials(emb, speakers, enrol=3)
    # a: 3 enrol, 7 trials; b: 2 enrol (half of 4), 2 trials; c (one utterance) is left out: 9 trials x 2 models.
    assert len(scores) == 18 and is_target.sum() == 9
    assert M.eer(scores, is_target) == 0.0  # well-separated speakers
    assert M.verification_trials(emb[:10], speakers[:10], enrol=3)[0].size == 0  # one speaker: no trial
    zero = M.verification_trials([[0, 0], [1, 0], [0, 1], [0, 1]], ["a", "a", "b", "b"], enrol=1)[0]
    assert np.all(np.isfinite(zero)) and zero[0] == 0.0  # a zero model scores 0


def test_verification_trials_reject_bad_inputs():
    with pytest.raises(ValueError, match="one speaker"):
        M.verification_trials([[1.0, 0.0]], ["a", "b"], enrol=1)
    with pytest.raises(ValueError, match="non-finite"):
        M.verification_trials([[np.nan, 0.0], [1.0, 0.0]], ["a", "b"], enrol=1)
    with pytest.raises(ValueError, match="enrol >= 1 must hold, got 0"):
        M.verification_trials([[1.0, 0.0], [0.0, 1.0]], ["a", "b"], enrol=0)
