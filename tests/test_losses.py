"""FCRC losses (docs/method.md §8.1-8.3) against references written straight from the formulas with Python loops."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from numclip_mm.models.losses import FCRCImageTextLoss, FCRCTextImageLoss, L1RegressionLoss, ordinal_distance_weights

# Doc 3.1, K = 5 (rows = anchor class c, columns = candidate class j).
DOC_TABLE_K5 = [
    [1, 0.400, 0.800, 1.200, 1.600],
    [0.571, 1, 0.571, 1.143, 1.714],
    [1.333, 0.667, 1, 0.667, 1.333],
    [1.714, 1.143, 0.571, 1, 0.571],
    [1.600, 1.200, 0.800, 0.400, 1],
]

LOGITS_B4_K3 = [[2.0, -1.0, 0.5],
                [0.3, 1.2, -0.7],
                [-1.5, 0.4, 2.2],
                [1.0, 1.0, -2.0]]

LOGITS_B6_K5 = [[3.1, -0.4, 1.7, 0.0, -2.2],
                [0.5, 2.4, -1.1, 0.9, 1.3],
                [-0.8, 0.6, 2.9, -1.7, 0.2],
                [1.4, -2.3, 0.7, 3.3, -0.5],
                [0.1, 1.9, -0.6, 2.0, 2.7],
                [-1.2, 0.3, 1.1, -0.9, 4.0]]


pytestmark = pytest.mark.usefixtures('one_torch_thread')


# --------------------------------------------------------------------------------------------------------------
# references: scalar Python, one formula at a time
# --------------------------------------------------------------------------------------------------------------
def ref_weight(c, j, k):
    """Doc 3.1: w(c, j) = (K-1)|c-j| / sum_k |c-k| for j != c, 1 for j == c."""
    if c == j:
        return 1.0
    return (k - 1) * abs(c - j) / sum(abs(c - m) for m in range(k))


def ref_i2t(logits, labels, form='code', weighted=True):
    """Doc 3.2: code form CE over w * l; paper form -log e^{l_c} / (e^{l_c} + sum_{j != c} w e^{l_j})."""
    k = len(logits[0])
    total = 0.0
    for row, c in zip(logits, labels):
        w = [ref_weight(c, j, k) if weighted else 1.0 for j in range(k)]
        if form == 'code':
            z = [w[j] * row[j] for j in range(k)]
            total += -(z[c] - math.log(sum(math.exp(v) for v in z)))
        else:
            num = math.exp(row[c])
            den = num + sum(w[j] * math.exp(row[j]) for j in range(k) if j != c)
            total += -math.log(num / den)
    return total / len(labels)


def ref_t2i(logits, labels, num_classes, weighted=True, sharpness=10.0):
    """Doc 3.3: mean over present classes j of KL(q_j || softmax_b(u_jb * l_bj)), summed over images b."""
    b_count = len(labels)
    kls = []
    for j in range(num_classes):
        if j not in labels:
            continue  # absent classes contribute 0
        e = [math.exp(sharpness * (1.0 if labels[b] == j else 0.0)) for b in range(b_count)]
        q = [v / sum(e) for v in e]
        denom = sum(abs(j - labels[b]) for b in range(b_count))
        u = []
        for b in range(b_count):
            if not weighted or labels[b] == j or denom == 0:
                u.append(1.0)
            else:
                u.append((num_classes - 1) * abs(j - labels[b]) / denom)
        z = [u[b] * logits[b][j] for b in range(b_count)]
        log_norm = math.log(sum(math.exp(v) for v in z))
        log_p = [v - log_norm for v in z]
        kls.append(sum(q[b] * (math.log(q[b]) - log_p[b]) for b in range(b_count)))
    return sum(kls) / len(kls)


def _single_class_kl(logits, labels, j, num_classes, sharpness=10.0):
    """KL(q_j || softmax_b(u_jb l_bj)) of one class j, straight from docs/method.md §8.3."""
    n = len(labels)
    q_raw = [math.exp(sharpness * (labels[b] == j)) for b in range(n)]
    q = [v / sum(q_raw) for v in q_raw]
    denom = sum(abs(j - c) for c in labels)
    u = [1.0 if (labels[b] == j or denom == 0) else (num_classes - 1) * abs(j - labels[b]) / denom
         for b in range(n)]
    z = [u[b] * logits[b][j] for b in range(n)]
    p_raw = [math.exp(v) for v in z]
    p = [v / sum(p_raw) for v in p_raw]
    return sum(q[b] * math.log(q[b] / p[b]) for b in range(n))


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


def lab(x):
    return torch.tensor(x, dtype=torch.long)


# --------------------------------------------------------------------------------------------------------------
# 3.1 the weight table
# --------------------------------------------------------------------------------------------------------------
def test_distance_weights_match_doc_table():
    w = ordinal_distance_weights(5)
    assert w.shape == (5, 5)
    np.testing.assert_allclose(w.numpy(), np.array(DOC_TABLE_K5), atol=1e-3)


@pytest.mark.parametrize('k', [2, 3, 5, 8, 100])
def test_distance_weights_rows(k):
    w = ordinal_distance_weights(k).double()
    assert torch.equal(torch.diagonal(w), torch.ones(k, dtype=torch.float64))
    negatives = w.sum(dim=1) - 1.0
    torch.testing.assert_close(negatives, torch.full((k,), float(k - 1), dtype=torch.float64), rtol=1e-6, atol=1e-5)
    ref = torch.tensor([[ref_weight(c, j, k) for j in range(k)] for c in range(k)], dtype=torch.float64)
    torch.testing.assert_close(w, ref, rtol=1e-6, atol=1e-6)


def test_distance_weights_k3_by_hand():
    # c=0: distances (0, 1, 2) sum 3 -> (1, 2/3, 4/3); c=1: (1, 0, 1) sum 2 -> (1, 1, 1); c=2 mirrors c=0.
    expected = [[1, 2 / 3, 4 / 3], [1, 1, 1], [4 / 3, 2 / 3, 1]]
    torch.testing.assert_close(ordinal_distance_weights(3).double(), t(expected), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------
# 3.2 image -> text
# --------------------------------------------------------------------------------------------------------------
def test_i2t_code_form_number_by_hand():
    # One sample, K=3, class 0, logits (1, 2, 3): weighted logits (1, 4/3, 4), loss = log(e^1+e^{4/3}+e^4) - 1.
    loss = FCRCImageTextLoss(3)(t([[1.0, 2.0, 3.0]]), lab([0]))
    expected = math.log(math.exp(1) + math.exp(4 / 3) + math.exp(4)) - 1
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_i2t_paper_form_number_by_hand():
    # One sample, K=3, class 0, logits (1, 2, 3): -log e^1 / (e^1 + 2/3 e^2 + 4/3 e^3).
    loss = FCRCImageTextLoss(3, form='paper')(t([[1.0, 2.0, 3.0]]), lab([0]))
    expected = -math.log(math.e / (math.e + 2 / 3 * math.exp(2) + 4 / 3 * math.exp(3)))
    assert loss.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize('form', ['code', 'paper'])
@pytest.mark.parametrize('logits,labels', [
    (LOGITS_B4_K3, [0, 2, 1, 0]),
    (LOGITS_B6_K5, [0, 4, 2, 3, 1, 4]),
    (LOGITS_B6_K5, [3, 3, 0, 3, 0, 3]),   # classes 1, 2, 4 absent
    (LOGITS_B6_K5, [2, 2, 2, 2, 2, 2]),   # all one class
])
def test_i2t_matches_loop_reference(form, logits, labels):
    k = len(logits[0])
    loss = FCRCImageTextLoss(k, form=form)(t(logits), lab(labels))
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref_i2t(logits, labels, form), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize('form', ['code', 'paper'])
def test_i2t_unweighted_is_plain_ce(form):
    logits, labels = t(LOGITS_B6_K5), lab([0, 4, 2, 3, 1, 4])
    loss = FCRCImageTextLoss(5, distance_weighted=False, form=form)(logits, labels)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))
    assert loss.item() == pytest.approx(ref_i2t(LOGITS_B6_K5, [0, 4, 2, 3, 1, 4], weighted=False), rel=1e-9)


def test_i2t_differs_from_plain_ce_and_between_forms():
    logits, labels = t(LOGITS_B6_K5), lab([0, 4, 2, 3, 1, 4])
    code = FCRCImageTextLoss(5, form='code')(logits, labels)
    paper = FCRCImageTextLoss(5, form='paper')(logits, labels)
    plain = F.cross_entropy(logits, labels)
    assert abs(code.item() - plain.item()) > 1e-3
    assert abs(paper.item() - plain.item()) > 1e-3
    assert abs(code.item() - paper.item()) > 1e-3


def test_i2t_loss_weight_and_bad_form():
    logits, labels = t(LOGITS_B4_K3), lab([0, 2, 1, 0])
    base = FCRCImageTextLoss(3)(logits, labels)
    torch.testing.assert_close(FCRCImageTextLoss(3, loss_weight=2.5)(logits, labels), 2.5 * base)
    with pytest.raises(ValueError, match='form'):
        FCRCImageTextLoss(3, form='batch')


def test_i2t_far_negative_gets_larger_push():
    """Equal logits on two negatives: the one farther from the label gets the larger gradient (code form)."""
    logits = torch.zeros(1, 5, dtype=torch.float64, requires_grad=True)
    FCRCImageTextLoss(5)(logits, lab([0])).backward()
    g = logits.grad[0]
    assert g[0] < 0
    assert 0 < g[1] < g[2] < g[3] < g[4]


@pytest.mark.parametrize('form', ['code', 'paper'])
@pytest.mark.parametrize('weighted', [True, False])
def test_i2t_gradcheck(form, weighted):
    torch.manual_seed(0)
    logits = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    labels = lab([0, 3, 3, 1])
    loss = FCRCImageTextLoss(5, distance_weighted=weighted, form=form)
    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (logits,))


# --------------------------------------------------------------------------------------------------------------
# 3.3 text -> image
# --------------------------------------------------------------------------------------------------------------
def test_t2i_number_by_hand():
    """B=2, K=2, labels (0, 1), logits [[1, 0], [0, 2]].

    Class 0: denominator |0-0|+|0-1| = 1 -> u = (1, 1); q = softmax(10, 0); p = softmax(1, 0).
    Class 1: u = (1, 1); q = softmax(0, 10); p = softmax(0, 2). Loss = mean of the two KLs.
    """
    def softmax(v):
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]

    def kl(q, p):
        return sum(a * math.log(a / b) for a, b in zip(q, p))

    expected = 0.5 * (kl(softmax([10, 0]), softmax([1, 0])) + kl(softmax([0, 10]), softmax([0, 2])))
    loss = FCRCTextImageLoss(2)(t([[1.0, 0.0], [0.0, 2.0]]), lab([0, 1]))
    assert loss.item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize('logits,labels', [
    (LOGITS_B4_K3, [0, 2, 1, 0]),
    (LOGITS_B4_K3, [0, 0, 2, 2]),         # class 1 absent
    (LOGITS_B6_K5, [0, 4, 2, 3, 1, 4]),
    (LOGITS_B6_K5, [3, 3, 0, 3, 0, 3]),   # classes 1, 2, 4 absent
])
@pytest.mark.parametrize('weighted', [True, False])
def test_t2i_matches_loop_reference(logits, labels, weighted):
    k = len(logits[0])
    loss = FCRCTextImageLoss(k, distance_weighted=weighted)(t(logits), lab(labels))
    assert loss.item() == pytest.approx(ref_t2i(logits, labels, k, weighted), rel=1e-6, abs=1e-8)


def test_t2i_absent_classes_contribute_nothing():
    """Only the present classes enter: the mean is over 2 classes (0 and 3), not over K=5."""
    labels = [3, 3, 0, 3, 0, 3]
    loss = FCRCTextImageLoss(5)(t(LOGITS_B6_K5), lab(labels))
    assert loss.item() == pytest.approx(
        (_single_class_kl(LOGITS_B6_K5, labels, 0, 5) + _single_class_kl(LOGITS_B6_K5, labels, 3, 5)) / 2, rel=1e-9)
    # the columns of absent classes must not influence the loss (value or gradient) at all
    changed = [row[:] for row in LOGITS_B6_K5]
    for row in changed:
        row[1], row[2], row[4] = 50.0 * row[1], -30.0, 7.0
    loss_changed = FCRCTextImageLoss(5)(t(changed), lab(labels))
    assert loss.item() == pytest.approx(loss_changed.item(), rel=1e-12)
    logits = t(LOGITS_B6_K5).requires_grad_(True)
    FCRCTextImageLoss(5)(logits, lab(labels)).backward()
    assert torch.all(logits.grad[:, [1, 2, 4]] == 0)


def test_t2i_all_same_class_guard():
    """Every image of class 2: the weight denominator is 0, all weights become 1; the loss is finite and equals
    the unweighted KL for that class (target uniform over the batch)."""
    logits = t(LOGITS_B6_K5)
    labels = lab([2] * 6)
    loss = FCRCTextImageLoss(5)(logits, labels)
    assert torch.isfinite(loss)
    plain = FCRCTextImageLoss(5, distance_weighted=False)(logits, labels)
    torch.testing.assert_close(loss, plain)
    # target = uniform 1/6, prediction = softmax over images of column 2
    log_p = logits[:, 2].log_softmax(0)
    expected = (torch.full((6,), 1 / 6, dtype=torch.float64) * (math.log(1 / 6) - log_p)).sum()
    torch.testing.assert_close(loss, expected)
    assert loss.item() == pytest.approx(ref_t2i(LOGITS_B6_K5, [2] * 6, 5), rel=1e-9)
    # gradient finite too
    x = logits.clone().requires_grad_(True)
    FCRCTextImageLoss(5)(x, labels).backward()
    assert torch.isfinite(x.grad).all()


def test_t2i_single_sample_batch():
    loss = FCRCTextImageLoss(5)(t([LOGITS_B6_K5[0]]), lab([3]))
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)  # one image, target and prediction both 1


def test_t2i_unweighted_is_plain_kl():
    logits, labels = t(LOGITS_B6_K5), lab([0, 4, 2, 3, 1, 4])
    loss = FCRCTextImageLoss(5, distance_weighted=False)(logits, labels)
    target = (10.0 * (labels[None, :] == torch.arange(5)[:, None]).double()).softmax(dim=1)
    kl = F.kl_div(logits.t().log_softmax(dim=1), target, reduction='none').sum(dim=1)
    torch.testing.assert_close(loss, kl.mean())  # all 5 classes present
    weighted = FCRCTextImageLoss(5)(logits, labels)
    assert abs(weighted.item() - loss.item()) > 1e-3


def test_t2i_sharpness_and_loss_weight():
    logits, labels = t(LOGITS_B4_K3), [0, 2, 1, 0]
    loss = FCRCTextImageLoss(3, sharpness=3.0, loss_weight=0.5)(logits, lab(labels))
    assert loss.item() == pytest.approx(0.5 * ref_t2i(LOGITS_B4_K3, labels, 3, sharpness=3.0), rel=1e-9)


@pytest.mark.parametrize('labels', [[0, 3, 3, 1, 4, 0], [2, 2, 2, 2, 2, 2], [0, 0, 4, 4, 4, 0]])
@pytest.mark.parametrize('weighted', [True, False])
def test_t2i_gradcheck(labels, weighted):
    torch.manual_seed(1)
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    loss = FCRCTextImageLoss(5, distance_weighted=weighted)
    assert torch.autograd.gradcheck(lambda x: loss(x, lab(labels)), (logits,))


def test_losses_accept_float32_and_keep_dtype():
    logits = torch.randn(8, 5)
    labels = lab([0, 1, 2, 3, 4, 0, 1, 2])
    for loss in (FCRCImageTextLoss(5), FCRCImageTextLoss(5, form='paper'), FCRCTextImageLoss(5)):
        out = loss(logits, labels)
        assert out.dtype == torch.float32 and out.ndim == 0 and torch.isfinite(out)


def test_l1_regression_loss():
    pred = torch.tensor([1.0, 2.0, 5.0])
    target = torch.tensor([2, 2, 1])
    assert L1RegressionLoss()(pred, target).item() == pytest.approx((1 + 0 + 4) / 3)
    assert L1RegressionLoss(loss_weight=3.0)(pred, target).item() == pytest.approx(5.0)
