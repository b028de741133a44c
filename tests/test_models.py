import numpy as np
import pytest
import torch

from cosdpo import score_items
from cosdpo.data import make_schema
from cosdpo.models.dropout import Dropout, dropout
from cosdpo.models.ranker import BaseRanker, ConditionedRanker, ListTransformer, ScorerConfig, load_ranker, save_ranker

SCHEMA = make_schema(136, ["quality1", "quality2"])
SMALL = ScorerConfig(d_model=16, n_layers=2, n_heads=2, dropout=0.0)


def _models(param="augment"):
    torch.manual_seed(0)
    base = BaseRanker(SCHEMA.with_objectives([]), SMALL)
    model = ConditionedRanker(base, SCHEMA, SMALL, param)
    torch.nn.init.normal_(model.net.head.weight)  # as if trained
    return base.eval(), model.eval()


def _group(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, n, 131, generator=g).abs() * 10


@pytest.mark.parametrize("param", ["scratch", "augment"])
def test_padding_and_batch_mates_change_no_score(param):
    base, model = _models(param)
    x = _group(5)
    w = torch.tensor([0.3, 0.7])
    alone = model(x, torch.ones(1, 5, dtype=torch.bool), w)
    other = _group(9, seed=1)
    xb = torch.cat([torch.cat([x, torch.full((1, 4, 131), 1e6)], 1), other])
    mask = torch.tensor([[True] * 5 + [False] * 4, [True] * 9])
    batched = model(xb, mask, w)
    torch.testing.assert_close(batched[0, :5], alone[0], atol=1e-5, rtol=1e-5)
    assert torch.all(batched[0, 5:] == 0)
    torch.testing.assert_close(
        base(xb, mask)[0, :5], base(x, torch.ones(1, 5, dtype=torch.bool))[0], atol=1e-5, rtol=1e-5
    )


def test_scores_are_permutation_equivariant():
    base, _ = _models()
    x, mask = _group(7), torch.ones(1, 7, dtype=torch.bool)
    perm = torch.randperm(7)
    torch.testing.assert_close(base(x[:, perm], mask)[0], base(x, mask)[0][perm], atol=1e-5, rtol=1e-5)


def test_augment_starts_at_the_base_and_w_matters_after():
    torch.manual_seed(0)
    base = BaseRanker(SCHEMA.with_objectives([]), SMALL).eval()
    fresh = ConditionedRanker(base, SCHEMA, SMALL, "augment").eval()
    x, mask = _group(), torch.ones(1, 6, dtype=torch.bool)
    for w in ([1.0, 0.0], [0.5, 0.5]):
        torch.testing.assert_close(fresh(x, mask, torch.tensor(w)), base(x, mask))
    _, trained = _models()
    assert not torch.allclose(trained(x, mask, torch.tensor([1.0, 0.0])), trained(x, mask, torch.tensor([0.0, 1.0])))
    assert all(not p.requires_grad for p in trained.base.parameters())


@pytest.mark.parametrize("param", ["scratch", "augment"])
def test_save_and_load_round_trip(tmp_path, param):
    _, model = _models(param)
    model.base.norm.mean.fill_(0.5)
    save_ranker(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_ranker(tmp_path / "m")
    assert isinstance(loaded, ConditionedRanker) and loaded.parametrisation == param
    x, mask, w = _group(), torch.ones(1, 6, dtype=torch.bool), torch.tensor([0.2, 0.8])
    torch.testing.assert_close(loaded(x, mask, w), model(x, mask, w))
    torch.testing.assert_close(loaded.base(x, mask), model.base(x, mask))
    (tmp_path / "m" / "checkpoint").mkdir()
    save_ranker(model, tmp_path / "m")  # saving again replaces the files and keeps the rest of the folder
    assert (tmp_path / "m" / "checkpoint").is_dir()
    assert not any(p.name.startswith(".") for p in (tmp_path / "m").iterdir())


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        load_ranker(tmp_path)


def test_score_items_api():
    base, model = _models()
    rng = np.random.default_rng(0)
    rows = rng.random((8, 136)) * 100
    full = score_items(model, rows, [0.4, 0.6])
    inputs_only = score_items(model, rows[:, :131], [0.4, 0.6])
    np.testing.assert_allclose(full, inputs_only)
    assert full.shape == (8,)
    with pytest.raises(ValueError, match="simplex"):
        score_items(model, rows, [0.5, 0.6])
    with pytest.raises(ValueError, match="2 objectives"):
        score_items(model, rows, [1.0])
    with pytest.raises(ValueError, match="needs weights"):
        score_items(model, rows)
    with pytest.raises(ValueError, match="not conditioned"):
        score_items(base, rows, [1.0, 0.0])
    with pytest.raises(ValueError, match="136"):
        score_items(model, rows[:, :100], [1.0, 0.0])


def test_bad_model_options():
    with pytest.raises(ValueError, match="divisible"):
        ScorerConfig(d_model=10, n_heads=4)
    base = BaseRanker(SCHEMA.with_objectives([]), SMALL)
    with pytest.raises(ValueError, match="parametrisation"):
        ConditionedRanker(base, SCHEMA, SMALL, "lora")
    with pytest.raises(ValueError, match="different input"):
        ConditionedRanker(base, make_schema(46, ["f44"]), SMALL)


def test_feature_norm_in_row_blocks_equals_torchs_mean_and_std():
    from cosdpo.models.ranker import FeatureNorm, signed_log1p

    x = np.random.default_rng(0).lognormal(0, 3, (2000, 6)).astype(np.float32) * np.array([1, -1, 1e4, 1, 1e-3, 5])
    z = signed_log1p(torch.from_numpy(x.astype(np.float32)))
    for chunk in (1 << 18, 333):  # one block, and blocks that do not divide the rows
        norm = FeatureNorm(6)
        norm.fit(x.astype(np.float32), chunk=chunk)
        torch.testing.assert_close(norm.mean, z.mean(0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(norm.std, z.std(0), rtol=1e-5, atol=1e-5)


def test_attention_dropout_is_its_own_option():
    """With no attention dropout (the default) and no other dropout, training mode scores as eval mode does;
    attention dropout alone makes training-mode scores vary."""
    x, mask = torch.randn(3, 9, 5), torch.ones(3, 9, dtype=torch.bool)
    quiet = ListTransformer(5, ScorerConfig(d_model=16, n_heads=2, dropout=0.0)).train()
    torch.testing.assert_close(quiet(x, mask), quiet.eval()(x, mask), rtol=1e-5, atol=1e-5)
    noisy = ListTransformer(5, ScorerConfig(d_model=16, n_heads=2, dropout=0.0, attn_dropout=0.5)).train()
    assert not torch.allclose(noisy(x, mask), noisy(x, mask))


def test_dropout_keeps_its_rate_and_expectation():
    """The 16-bit mask keeps round(0.9 * 2^16) / 2^16 of the elements, each scaled by its inverse, so the
    mean is kept exactly in expectation; the four elements cut from one 64-bit draw are independent."""
    torch.manual_seed(0)
    p, n = 0.1, 1 << 20
    y = dropout(torch.ones(n), p)
    keep = round(0.9 * 65536) / 65536
    kept = y != 0
    assert torch.all(y[kept] == 1 / keep)
    assert abs(kept.double().mean().item() - keep) < 5 * (keep * (1 - keep) / n) ** 0.5
    # pairs of neighbours from the same draw, and from neighbouring draws: both kept at keep^2
    for a, b in ((kept[0::4], kept[1::4]), (kept[3::4], kept[4::4])):
        both = (a[: len(b)] & b).double().mean().item()
        assert abs(both - keep**2) < 5 * (keep**2 * (1 - keep**2) / len(b)) ** 0.5
    # a rate near 0 or 1 still keeps its mean
    for p in (0.5, 0.999):
        z = dropout(torch.ones(n), p)
        assert abs(z.double().mean().item() - 1) < 5 * (p / (1 - p) / n) ** 0.5


def test_dropout_gradient_is_its_mask_and_follows_the_seed():
    x = torch.randn(7, 33, requires_grad=True)
    g = torch.randn(7, 33)
    torch.manual_seed(3)
    y = dropout(x, 0.3)
    y.backward(g)
    torch.testing.assert_close(x.grad, g * (y / x).detach(), rtol=1e-6, atol=0)  # the forward's mask
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.3), y)
    assert not torch.equal(dropout(x, 0.3), y)  # the generator moved on
    assert torch.equal(dropout(x, 0.3, training=False), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert dropout(x.detach().bfloat16(), 0.3).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout(x, 1.0)


def test_rankers_draw_the_cheap_masks():
    """Every dropout of the list transformer's residual and feed-forward paths is the cheap one, and draws
    from torch's generator: a seed repeats a training-mode forward."""
    net = ListTransformer(5, ScorerConfig(d_model=16, n_heads=2, dropout=0.3)).train()
    drops = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == 2 * 3 and all(type(m) is Dropout for m in drops)
    x, mask = torch.randn(3, 9, 5), torch.ones(3, 9, dtype=torch.bool)
    torch.manual_seed(1)
    first = net(x, mask)
    torch.manual_seed(1)
    assert torch.equal(net(x, mask), first)
    assert not torch.equal(net(x, mask), first)
