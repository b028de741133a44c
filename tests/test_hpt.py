"""Hyper Prompt Tuning on a tiny random Llama (vocab 256) with LoRA."""

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from cosdpo.losses import pair_logprobs, pair_window, sequence_logprobs  # noqa: E402
from cosdpo.models.hpt import HPTConfig, HPTModel  # noqa: E402
from cosdpo.models.llm import load_base, peft_wrapping  # noqa: E402
from cosdpo.training.llm import build_policy, load_split  # noqa: E402
from tests.tiny_llm import cfg_for, save_tiny_gpt2  # noqa: E402


def tiny_base(seed=0):
    """The tiny Llama alone; the same seed gives the same weights (what a saved policy is loaded onto)."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def tiny_lora(seed=0):
    base = tiny_base(seed)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    with peft_wrapping():
        model = peft.get_peft_model(base, lora)
    for name, p in model.named_parameters():  # as if trained: LoRA's B starts at zero
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    return model


@pytest.fixture()
def hpt():
    m = HPTModel.wrap(tiny_lora(), n_objectives=2, n_tokens=3, rank=2)
    for p in (m.hpt.mlp_a[-1].weight, m.hpt.mlp_b[-1].weight):
        torch.nn.init.normal_(p, std=0.5)  # as if trained: w now matters
    return m.eval()


def batch():
    ids = torch.tensor([[5, 17, 33, 9, 70], [8, 12, 3, 0, 0]])
    return ids, torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def test_logits_align_with_the_tokens_and_depend_on_w(hpt):
    ids, mask = batch()
    a, b = hpt(ids, mask, [1.0, 0.0]), hpt(ids, mask, [0.0, 1.0])
    assert a.shape == (2, 5, 256)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(hpt(ids, mask, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))[1], b[1])  # per-row w


def test_prefix_is_prepended_as_embeddings(hpt):
    """Our forward equals the model run by hand on [P * M ; token embeddings]."""
    ids, mask = batch()
    w = torch.tensor([0.3, 0.7])
    prefix = hpt.hpt(w[None].expand(2, -1))
    embeds = torch.cat([prefix, hpt.model.get_input_embeddings()(ids)], 1)
    full = torch.cat([torch.ones(2, 3, dtype=mask.dtype), mask], 1)
    manual = hpt.model(inputs_embeds=embeds, attention_mask=full).logits[:, 3:]
    real = mask.bool()  # padded positions' logits are never read (their position ids differ)
    torch.testing.assert_close(hpt(ids, mask, w)[real], manual[real])


def test_padding_changes_no_real_logit(hpt):
    ids, mask = batch()
    w = [0.5, 0.5]
    full = hpt(ids, mask, w)
    alone = hpt(ids[1:, :3], mask[1:, :3], w)
    torch.testing.assert_close(full[1, :3], alone[0], atol=1e-5, rtol=1e-5)


def test_mask_starts_at_one():
    m = HPTModel.wrap(tiny_lora(), n_objectives=2, n_tokens=3, rank=2)
    mask = m.hpt.mlp_a[-1].bias.view(3, 2) @ m.hpt.mlp_b[-1].bias.view(2, 32)
    torch.testing.assert_close(mask, torch.ones(3, 32))
    out = m.hpt(torch.tensor([[1.0, 0.0]]))[0]
    torch.testing.assert_close(out, m.hpt.prefix.detach(), atol=0.02, rtol=0.05)


def test_tanh_mask_starts_as_the_linear_one_and_stays_within_0_and_2():
    linear = HPTModel.wrap(tiny_lora(), n_objectives=2, n_tokens=3, rank=2)
    bounded = HPTModel.wrap(tiny_lora(), n_objectives=2, n_tokens=3, rank=2, mask="tanh")
    bounded.hpt.load_state_dict(linear.hpt.state_dict())
    w = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    torch.testing.assert_close(bounded.hpt(w), linear.hpt(w), atol=1e-6, rtol=1e-6)  # M near 1: tanh is the identity
    for h in (linear.hpt, bounded.hpt):
        for p in (h.mlp_a[-1].weight, h.mlp_b[-1].weight):
            torch.manual_seed(3)
            torch.nn.init.normal_(p, std=2.0)  # as after a burst: A B far from 1
    z = (w - bounded.hpt.w_center) * bounded.hpt.w_scale
    ab = bounded.hpt.mlp_a(z).view(2, 3, 2) @ bounded.hpt.mlp_b(z).view(2, 2, 32)
    assert ab.max() > 2 and ab.min() < 0  # the linear mask leaves (0, 2)
    torch.testing.assert_close(linear.hpt(w), linear.hpt.prefix * ab)
    torch.testing.assert_close(bounded.hpt(w), bounded.hpt.prefix * (1 + torch.tanh(ab - 1)))
    ratio = bounded.hpt(w) / bounded.hpt.prefix
    assert ratio.min() >= 0 and ratio.max() <= 2  # (0, 2), closed where float32 saturates
    with pytest.raises(ValueError, match="mask"):
        HPTConfig(2, 32, mask="sigmoid")


def test_w_enters_the_mlps_standardised(hpt):
    """The MLPs see (w - 1/K) * scale with the Dir(alpha) std: raw w was too faint to condition on."""
    w = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    h = hpt.hpt
    z = (w - 0.5) * ((2 * h.cfg.alpha + 1) / 0.25) ** 0.5
    mask = h.mlp_a(z).view(2, 3, 2) @ h.mlp_b(z).view(2, 2, 32)
    torch.testing.assert_close(h(w), h.prefix * mask)
    assert not torch.allclose(h(w), h.prefix * (h.mlp_a(w).view(2, 3, 2) @ h.mlp_b(w).view(2, 2, 32)))


def test_reference_is_the_base_without_adapters_or_prefix(hpt):
    ids, mask = batch()
    base = hpt.model.get_base_model()
    with hpt.model.disable_adapter():
        want = base(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(hpt.reference_logits(ids, mask), want)
    assert not torch.allclose(hpt.model(input_ids=ids, attention_mask=mask).logits, want)  # LoRA is active


def test_generate_greedy_matches_the_forward(hpt):
    ids = torch.tensor([[5, 17, 33, 9]])
    mask = torch.ones_like(ids)
    w = [0.2, 0.8]
    out = hpt.generate(ids, mask, w, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape[0] == 1 and 1 <= out.shape[1] <= 3
    seq = ids
    for t in range(out.shape[1]):  # greedy by hand through our forward
        nxt = hpt(seq, torch.ones_like(seq), w)[:, -1].argmax(-1, keepdim=True)
        assert nxt.item() == out[0, t].item()
        seq = torch.cat([seq, nxt], 1)


def test_save_and_load_round_trip(hpt, tmp_path):
    ids, mask = batch()
    hpt.save_pretrained(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "adapter_model.safetensors" in names and "hpt.safetensors" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]
    fresh_base = tiny_base()  # same seed: same base weights, and the adapter comes from the folder
    loaded = HPTModel.from_pretrained(fresh_base, tmp_path).eval()
    torch.testing.assert_close(loaded(ids, mask, [0.3, 0.7]), hpt(ids, mask, [0.3, 0.7]))
    with pytest.raises(ValueError, match="built for 2"):
        loaded(ids, mask, [1.0, 0.0, 0.0])
    cfg = json.loads((tmp_path / "hpt_config.json").read_text())
    (tmp_path / "hpt_config.json").write_text(json.dumps(cfg | {"version": 99}))  # from a newer cosdpo
    with pytest.raises(ValueError, match="version 99; this cosdpo reads version 1"):
        HPTModel.from_pretrained(tiny_lora().get_base_model(), tmp_path)


def test_tanh_mask_is_saved(tmp_path):
    m = HPTModel.wrap(tiny_lora(), n_objectives=2, n_tokens=3, rank=2, mask="tanh")
    for p in (m.hpt.mlp_a[-1].weight, m.hpt.mlp_b[-1].weight):
        torch.nn.init.normal_(p, std=2.0)
    ids, mask = batch()
    m.eval().save_pretrained(tmp_path)
    loaded = HPTModel.from_pretrained(tiny_base(), tmp_path).eval()
    assert loaded.cfg.mask == "tanh"
    torch.testing.assert_close(loaded(ids, mask, [0.3, 0.7]), m(ids, mask, [0.3, 0.7]))
    cfg = json.loads((tmp_path / "hpt_config.json").read_text())
    (tmp_path / "hpt_config.json").write_text(json.dumps(cfg | {"format": "other"}))
    with pytest.raises(ValueError, match="is not a cosdpo-hyper-prompt file"):
        HPTModel.from_pretrained(tiny_lora().get_base_model(), tmp_path)


def test_kept_logits_are_the_last_positions_of_the_full_ones(hpt):
    """keep = k: the model's own logits_to_keep gives exactly the last k token positions, under w and
    for the reference (no prefix)."""
    ids, mask = batch()
    w = torch.tensor([0.3, 0.7])
    full, ref = hpt(ids, mask, w), hpt.reference_logits(ids, mask)
    torch.testing.assert_close(hpt(ids, mask, w, 2), full[:, -2:])
    torch.testing.assert_close(hpt.reference_logits(ids, mask, 3), ref[:, -3:])
    with pytest.raises(ValueError, match="keep must be within"):
        hpt(ids, mask, w, 6)


def test_bf16_runs_every_forward_under_autocast(hpt):
    """set_compute("bf16"): the language model runs inside torch.autocast (the oracle: the model called
    by hand on [P * M ; embeddings] under autocast), the prefix is made in float32, the weights stay
    float32 and their gradients follow the float32 ones; the reference and both decoding loops too."""
    from cosdpo.generation import generate_ids

    ids, mask = batch()
    w = torch.tensor([0.3, 0.7])
    real = mask.bool()
    fp32, ref32 = hpt(ids, mask, w), hpt.reference_logits(ids, mask)
    embeds = torch.cat([hpt.hpt(w[None].expand(2, -1)), hpt.model.get_input_embeddings()(ids)], 1)
    full = torch.cat([torch.ones(2, 3, dtype=mask.dtype), mask], 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        oracle = hpt.model(inputs_embeds=embeds, attention_mask=full).logits[:, 3:]
        with hpt.model.disable_adapter():
            ref_oracle = hpt.model(input_ids=ids, attention_mask=mask).logits
    hpt.set_compute("bf16")
    assert hpt.precision == "bf16"
    torch.testing.assert_close(hpt(ids, mask, w)[real], oracle[real], rtol=0, atol=0)
    torch.testing.assert_close(hpt.reference_logits(ids, mask)[real], ref_oracle[real], rtol=0, atol=0)
    assert not torch.equal(oracle[real].float(), fp32[real])  # bf16 matmuls did run ...
    torch.testing.assert_close(oracle[real].float(), fp32[real], rtol=0.05, atol=0.05)  # ... near float32
    torch.testing.assert_close(ref_oracle[real].float(), ref32[real], rtol=0.05, atol=0.05)
    assert all(p.dtype == torch.float32 for p in hpt.parameters())
    ours = generate_ids(hpt, ids[:1], mask[:1], w, max_new_tokens=4)
    theirs = hpt.generate(ids[:1], mask[:1], w, max_new_tokens=4, do_sample=False)
    assert torch.equal(ours, theirs)

    def grads(precision):
        hpt.set_compute(precision)
        hpt.zero_grad()
        hpt(ids, mask, w).float().logsumexp(-1).sum().backward()
        return torch.cat([p.grad.flatten() for p in hpt.parameters() if p.requires_grad])

    g32, g16 = grads("fp32"), grads("bf16")
    assert g16.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(g32, g16, dim=0) > 0.99


def test_attention_kernels_agree_in_float32(hpt):
    ids, mask = batch()
    real = mask.bool()
    sdpa = hpt.set_compute("fp32", "sdpa")(ids, mask, [0.3, 0.7])
    assert hpt.attention == "sdpa"
    eager = hpt.set_compute("fp32", "eager")(ids, mask, [0.3, 0.7])
    assert hpt.attention == "eager"
    torch.testing.assert_close(eager[real], sdpa[real], atol=1e-5, rtol=1e-5)
    hpt.set_compute("fp32", "auto")  # auto leaves the kernel as it is
    assert hpt.attention == "eager"
    with pytest.raises(ValueError, match="precision must be one of"):
        hpt.set_compute("fp16")
    with pytest.raises(ValueError, match="attention must be one of"):
        hpt.set_compute("fp32", "flash")


def mixed(seed=0):
    """A w-mixed LoRA of rank 2 per objective (rank 4 in all) under a Hyper Prompt."""
    m = HPTModel.wrap(tiny_lora(seed), n_objectives=2, n_tokens=3, rank=2, lora_mix=True)
    for p in (m.hpt.mlp_a[-1].weight, m.hpt.mlp_b[-1].weight):
        torch.nn.init.normal_(p, std=0.5)
    return m.eval()


def test_mixed_lora_is_the_w_mix_of_its_rank_blocks():
    """The oracle: every lora_A's k-th block of rows scaled by w_k in the weights themselves (so the
    update is sum_k w_k B_k A_k), the hooks set to 1; per batch row, and 0 gives the base model."""
    m = mixed()
    ids, mask = batch()
    real = mask.bool()
    projections = [mod for name, mod in m.named_modules() if name.endswith("lora_A.default")]
    assert projections and all(p.out_features == 4 for p in projections)

    def oracle(w):
        saved = [p.weight.detach().clone() for p in projections]
        embeds = torch.cat([m.hpt(w[None].expand(2, -1)), m.model.get_input_embeddings()(ids)], 1)
        full = torch.cat([torch.ones(2, 3, dtype=mask.dtype), mask], 1)
        with torch.no_grad():
            for p in projections:
                p.weight.mul_(w.repeat_interleave(2)[:, None])
            with m.lora_weights(torch.ones(2, 2)):
                out = m.model(inputs_embeds=embeds, attention_mask=full).logits[:, 3:]
            for p, s in zip(projections, saved):
                p.weight.copy_(s)
        return out

    with torch.no_grad():
        for w in ([1.0, 0.0], [0.3, 0.7], [0.0, 1.0]):
            w = torch.tensor(w)
            torch.testing.assert_close(m(ids, mask, w)[real], oracle(w)[real])
        rows = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
        both = m(ids, mask, rows)
        torch.testing.assert_close(both[1][real[1]], m(ids, mask, rows[1])[1][real[1]])
        assert not torch.allclose(m(ids, mask, [1.0, 0.0]), m(ids, mask, [0.0, 1.0]), atol=1e-3)
        with m.lora_weights(torch.zeros(2, 2)):  # w = 0 in the LoRA: the base model (here without prefix)
            zero = m.model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(zero[real], m.reference_logits(ids, mask)[real])
    with pytest.raises(RuntimeError, match="without w"):
        m.model(input_ids=ids, attention_mask=mask)


def test_mixed_lora_generates_and_round_trips(tmp_path):
    from cosdpo.generation import generate_ids

    m = mixed()
    ids, mask = batch()
    w = torch.tensor([0.3, 0.7])
    with torch.no_grad():  # adapter weights no fresh tiny_lora() has: the round trip below must load them
        for name, p in m.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) * 0.2)
    ours = generate_ids(m, ids[:1], mask[:1], w, max_new_tokens=4)
    assert torch.equal(ours, m.generate(ids[:1], mask[:1], w, max_new_tokens=4, do_sample=False))
    with m.model.disable_adapter():  # ratio 0: the base alone, w = 0 in the LoRA and no prefix
        base = m.model.generate(input_ids=ids[:1], attention_mask=mask[:1], max_new_tokens=4, do_sample=False)
    assert torch.equal(generate_ids(m, ids[:1], mask[:1], w, ratio=0.0, max_new_tokens=4), base[:, ids.shape[1] :])
    generate_ids(m, ids[:1], mask[:1], w, ratio=0.5, max_new_tokens=4)  # tuned and base rows in one batch
    m.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "hpt_config.json").read_text())["lora_mix"] is True
    loaded = HPTModel.from_pretrained(tiny_base(), tmp_path).eval()  # same base weights
    assert loaded.lora_mix is not None
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask, w), m(ids, mask, w))
    with pytest.raises(ValueError, match="divisible by 3"):
        HPTModel.wrap(tiny_lora(), n_objectives=3, n_tokens=3, rank=2, lora_mix=True)


def test_auto_precision_is_bf16_only_where_the_device_computes_it_natively(hpt, monkeypatch):
    import cosdpo.models.hpt as module

    for native, expect in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(module, "fast_bf16_cpu", lambda native=native: native)
        assert hpt.set_compute("auto").precision == expect
        assert hpt.requested_precision == "auto"
    assert module.resolve_precision("bf16", torch.device("cpu")) == "bf16"  # asked for by name: kept
    hpt.set_compute("fp32")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_pairs_score_as_their_own_padded_sequences(tiny_llm, tiny_pairs, tmp_path, arch, attention):
    """A pair packed in one row (prompt once, the rejected response blind to the chosen one) gives each
    response the log-prob of its own padded sequence: policy (own w per row, w-mixed LoRA) and reference."""
    folder = tiny_llm if arch == "llama" else save_tiny_gpt2(tmp_path / "gpt2")
    cfg = cfg_for(folder, lora_mix=True, prompt_template="chat" if arch == "llama" else "plain")
    base, tok = load_base(str(folder), prompt_template=cfg.prompt_template)
    data, objectives, _ = load_split(tiny_pairs, tok, cfg, None, "train")
    policy = build_policy(base, cfg, len(objectives)).set_compute("fp32", attention)
    for name, p in policy.named_parameters():  # as if trained, and a prefix that depends on w
        if "lora_B" in name or "mlp_" in name:
            torch.nn.init.normal_(p, std=0.3)
    records = [0, 5, 2, 7, 3]
    b = data.batch(records)
    assert b["input_ids"].shape[1] < max(data.lengths[data.chosen[records]] + data.lengths[data.rejected[records]])
    w = torch.tensor(np.random.default_rng(0).dirichlet([1.0, 1.0], len(records)), dtype=torch.float32)
    keep = pair_window(b)
    chosen, rejected = pair_logprobs(policy(b["input_ids"], None, w, keep, packed=b), b)
    ref_c, ref_r = pair_logprobs(policy.reference_logits(b["input_ids"], None, keep, packed=b), b)
    for row, i in enumerate(records):
        pad = data.pad([data.chosen[i], data.rejected[i]])
        own = sequence_logprobs(
            policy(pad["input_ids"], pad["attention_mask"], w[row]), pad["input_ids"], pad["response_mask"]
        )
        ref = sequence_logprobs(
            policy.reference_logits(pad["input_ids"], pad["attention_mask"]), pad["input_ids"], pad["response_mask"]
        )
        assert torch.allclose(torch.stack([chosen[row], rejected[row]]), own, atol=1e-4), (row, chosen[row], own)
        assert torch.allclose(torch.stack([ref_c[row], ref_r[row]]), ref, atol=1e-4)
    assert not torch.allclose(chosen, rejected)
