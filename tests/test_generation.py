"""Controlled generation: the decoding loop against transformers' generate, and the beta' rescaling."""

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from cosdpo.generation import check_beta_prime, generate_ids  # noqa: E402
from cosdpo.models.hpt import HPTModel  # noqa: E402
from tests.test_hpt import tiny_lora  # noqa: E402


@pytest.fixture(params=[False, True], ids=["shared-lora", "w-mixed-lora"])
def policy(request):
    """Every test runs on both LoRAs: a w-mixed one turns its base rows off by w = 0, not by PEFT's
    mixed-adapter batches."""
    m = HPTModel.wrap(tiny_lora(), n_objectives=2, n_tokens=3, rank=2, lora_mix=request.param)
    for p in (m.hpt.mlp_a[-1].weight, m.hpt.mlp_b[-1].weight):
        torch.nn.init.normal_(p, std=0.5)
    if request.param:  # w scales each half of the update down: as if trained further, so tokens differ
        for name, p in m.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.6, generator=torch.Generator().manual_seed(1))
    return m.eval()


IDS = torch.tensor([[5, 17, 33, 9, 70]])
W = torch.tensor([0.3, 0.7])


def test_ratio_one_is_the_policy_and_ratio_zero_the_base(policy):
    mask = torch.ones_like(IDS)
    ours = generate_ids(policy, IDS, mask, W, max_new_tokens=8)
    assert torch.equal(ours, policy.generate(IDS, mask, W, max_new_tokens=8, do_sample=False))
    with policy.model.disable_adapter():
        base = policy.model.generate(input_ids=IDS, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(generate_ids(policy, IDS, mask, W, ratio=0.0, max_new_tokens=8), base[:, IDS.shape[1] :])
    assert not torch.equal(ours, base[:, IDS.shape[1] :])  # the test can tell them apart
    # the mixed batch (both halves in one forward) at a ratio of ~0 also gives the base
    assert torch.equal(generate_ids(policy, IDS, mask, W, ratio=1e-9, max_new_tokens=8), base[:, IDS.shape[1] :])


def test_left_padding_changes_nothing(policy):
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), IDS], dim=1)
    other = torch.tensor([[8, 12, 3, 4, 5, 6, 7, 9]])
    ids, mask = torch.cat([padded, other]), torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8])
    for ratio in (1.0, 0.4):
        both = generate_ids(policy, ids, mask, W, ratio=ratio, max_new_tokens=6)
        alone = generate_ids(policy, IDS, torch.ones_like(IDS), W, ratio=ratio, max_new_tokens=6)
        assert torch.equal(both[0], alone[0])


def test_first_token_follows_the_rescaled_logits(policy):
    """z' = z_base + (beta/beta') (z_theta - z_base), checked on the first token by hand."""
    mask = torch.ones_like(IDS)
    with torch.no_grad():
        z_t = policy(IDS, mask, W)[0, -1]
        z_b = policy.reference_logits(IDS, mask)[0, -1]
    picks = []
    for ratio in (0.5, 2.0, 4.0):
        first = generate_ids(policy, IDS, mask, W, ratio=ratio, max_new_tokens=1)
        assert int(first[0, 0]) == int((z_b + ratio * (z_t - z_b)).argmax())
        picks.append(int(first[0, 0]))
    # the rescaling decides: a loop that ignored it (policy or base alone) would pick one token throughout
    assert {int(z_t.argmax()), int(z_b.argmax())} != set(picks) and len(set(picks)) > 1


def test_sampling_is_seeded(policy):
    mask = torch.ones_like(IDS)
    a = generate_ids(policy, IDS, mask, W, do_sample=True, seed=3, max_new_tokens=10, top_p=0.9)
    b = generate_ids(policy, IDS, mask, W, do_sample=True, seed=3, max_new_tokens=10, top_p=0.9)
    c = generate_ids(policy, IDS, mask, W, do_sample=True, seed=4, max_new_tokens=10, top_p=0.9)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_eos_stops_and_pads(policy):
    mask = torch.ones_like(IDS)
    free = generate_ids(policy, IDS, mask, W, max_new_tokens=8)
    eos = int(free[0, 2])
    stopped = generate_ids(policy, IDS, mask, W, max_new_tokens=8, eos_token_id=eos, pad_token_id=0)
    assert stopped.shape[1] == 3 and torch.equal(stopped[0], free[0, :3])


def test_bad_beta_prime():
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="beta"):
            check_beta_prime(bad)
