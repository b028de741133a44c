import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax

from cosdpo.losses import dpo, label_transform, lipo, listnet, weight_cos


def _random_padded(B=5, N=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, N, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (B, N), generator=g).double()
    sizes = torch.tensor([7, 5, 3, 2, 6])[:B]
    mask = torch.arange(N)[None, :] < sizes[:, None]
    return scores, labels, mask


def test_listnet_matches_numpy_reference():
    scores, labels, mask = _random_padded()
    got = listnet(scores, labels, mask, reduction="none")[0].numpy()
    for b in range(len(scores)):
        m = mask[b].numpy()
        s, y = scores[b].numpy()[m], labels[b].numpy()[m]
        want = -(softmax(y) * log_softmax(s)).sum() if y.max() > y.min() else 0.0
        assert got[b] == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_l1_transform_matches_numpy():
    scores, labels, mask = _random_padded(seed=1)
    got = listnet(scores, labels, mask, transform="l1", reduction="none")[0].numpy()
    for b in range(len(scores)):
        m = mask[b].numpy()
        s, y = scores[b].numpy()[m], labels[b].numpy()[m]
        want = -(y / y.sum() * log_softmax(s)).sum() if y.max() > y.min() and y.sum() > 0 else 0.0
        assert got[b] == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_lipo_equals_dpo_on_binary_pairs():
    g = torch.Generator().manual_seed(2)
    s, ref = torch.randn(8, 2, generator=g, dtype=torch.float64), torch.randn(8, 2, generator=g, dtype=torch.float64)
    labels = torch.tensor([[1.0, 0.0]] * 8, dtype=torch.float64)
    mask = torch.ones(8, 2, dtype=torch.bool)
    for beta in (0.1, 1.0, 3.0):
        got = lipo(s, ref, labels, mask, beta=beta, transform="l1", reduction="none")[0]
        want = dpo(s[:, 0], s[:, 1], ref[:, 0], ref[:, 1], beta=beta, reduction="none")[0]
        manual = -np.log(1 / (1 + np.exp(-beta * ((s[:, 0] - ref[:, 0]) - (s[:, 1] - ref[:, 1])).numpy())))
        torch.testing.assert_close(got, want)
        np.testing.assert_allclose(got.numpy(), manual, rtol=1e-10)


@pytest.mark.parametrize("transform", ["softmax", "l1"])
def test_padding_changes_nothing(transform):
    scores, labels, mask = _random_padded(seed=3)
    ref = torch.randn_like(scores)
    scores.requires_grad_(True)
    loss = lipo(scores, ref, labels, mask, 0.7, transform)
    (grad,) = torch.autograd.grad(loss, scores)
    # add 4 padded columns full of garbage
    pad = torch.full((scores.shape[0], 4), 1e4, dtype=scores.dtype)
    s2 = torch.cat([scores.detach(), pad], 1).requires_grad_(True)
    loss2 = lipo(
        s2,
        torch.cat([ref, -pad], 1),
        torch.cat([labels, pad], 1),
        torch.cat([mask, torch.zeros_like(pad, dtype=torch.bool)], 1),
        0.7,
        transform,
    )
    (grad2,) = torch.autograd.grad(loss2, s2)
    torch.testing.assert_close(loss2, loss)
    torch.testing.assert_close(grad2[:, : scores.shape[1]], grad)
    assert torch.all(grad2[:, scores.shape[1] :] == 0)


def test_groups_without_preference_give_zero_and_no_nan():
    scores = torch.randn(3, 4, requires_grad=True)
    labels = torch.tensor([[2.0, 2, 2, 2], [0, 0, 0, 0], [1, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)  # last: one item only
    for transform in ("softmax", "l1"):
        per, valid = listnet(scores, labels, mask, transform, reduction="none")
        assert not valid.any() and torch.all(per == 0)
        loss = listnet(scores, labels, mask, transform)
        (grad,) = torch.autograd.grad(loss, scores)
        assert loss.item() == 0.0 and torch.isfinite(grad).all() and torch.all(grad == 0)
    fully_padded = torch.zeros(2, 3, dtype=torch.bool)
    assert listnet(scores[:2, :3], labels[:2, :3], fully_padded).item() == 0.0


def test_gradients_match_finite_differences():
    scores, labels, mask = _random_padded(seed=4)
    ref = torch.randn_like(scores)
    scores.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: lipo(s, ref, labels, mask, 1.3), (scores,))
    assert torch.autograd.gradcheck(lambda s: lipo(s, ref, labels, mask, 0.5, "l1"), (scores,))
    w = torch.tensor([0.3, 0.7], dtype=torch.float64)
    L = torch.tensor([0.8, 1.9], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: weight_cos(x, w, penalty=2.0), (L,))


def test_weight_cos_value():
    w, L = torch.tensor([0.25, 0.75]), torch.tensor([2.0, 1.0])
    cos = float(w @ L / (w.norm() * L.norm()))
    assert weight_cos(L, w, 0.0).item() == pytest.approx(1.25)
    assert weight_cos(L, w, 3.0).item() == pytest.approx(1.25 - 3.0 * cos, rel=1e-6)
    with pytest.raises(ValueError):
        weight_cos(L, torch.tensor([1.0, 0, 0]))


def test_bad_options():
    s, y, m = _random_padded()
    with pytest.raises(ValueError, match="label transform"):
        label_transform(y, m, "rank")
    with pytest.raises(ValueError, match="beta"):
        lipo(s, s, y, m, beta=0.0)
    with pytest.raises(ValueError, match="non-negative"):
        label_transform(-y - 1, m, "l1")
