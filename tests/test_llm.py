"""LLM recipe on a tiny random Llama: loss, reference cache, accumulation, resume, precision, fronts."""

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from cosdpo.data.preferences import load_many  # noqa: E402
from cosdpo.data.tokenize import PreferenceSet  # noqa: E402
from cosdpo.evaluation.preference import preference_front, preference_points, sequence_scores  # noqa: E402
from cosdpo.losses import dpo, sequence_logprobs  # noqa: E402
from cosdpo.models.hpt import HPTModel  # noqa: E402
from cosdpo.models.llm import add_lora, load_base, load_policy  # noqa: E402
from cosdpo.training import reference  # noqa: E402
from cosdpo.training.llm import LLMConfig, build_policy, finetune_llm, load_split  # noqa: E402
from cosdpo.training.preference_task import PreferenceTask  # noqa: E402
from tests.tiny_llm import adapter_state, cfg_for, quiet  # noqa: E402


def test_terms_are_dpo_per_objective_pair_by_pair(tiny_llm, tiny_pairs):
    base, tok = load_base(str(tiny_llm))
    cfg = cfg_for(tiny_llm)
    data, objectives, _ = load_split(tiny_pairs, tok, cfg, None, "train")
    policy = build_policy(base, cfg, len(objectives))
    for name, p in policy.named_parameters():  # as if trained
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.3)
    data.ref = sequence_scores(policy, data, reference=True)
    task = PreferenceTask(cfg, data)
    records = list(range(0, len(data), 3))
    sums, counts = task.terms(policy, data.batch(records), step=7)
    w = task.weights(7)
    expect_sums, expect_counts = torch.zeros(2, dtype=torch.float64), torch.zeros(2)
    for i in records:  # pair by pair, no sharing of sequences, reference by its own forward
        b = data.pad([data.chosen[i], data.rejected[i]])
        lp = sequence_logprobs(policy(b["input_ids"], b["attention_mask"], w), b["input_ids"], b["response_mask"])
        ref = sequence_logprobs(
            policy.reference_logits(b["input_ids"], b["attention_mask"]), b["input_ids"], b["response_mask"]
        )
        k = data.objective[i]
        expect_sums[k] += float(dpo(lp[:1], lp[1:], ref[:1], ref[1:], cfg.beta).detach())
        expect_counts[k] += 1
    assert counts.tolist() == expect_counts.tolist()
    assert torch.allclose(sums.double(), expect_sums, atol=1e-5)


def test_pair_weight_sampling_scores_each_pair_at_its_own_w(tiny_llm, tiny_pairs):
    """weight_sampling="pair": each pair is DPO at its own w ~ Dir(alpha + e_objective), found by a
    forward of that pair alone; the step weights every objective by E[w_k] = 1/K."""
    base, tok = load_base(str(tiny_llm))
    cfg = cfg_for(tiny_llm, weight_sampling="pair", alpha=0.2)
    data, objectives, _ = load_split(tiny_pairs, tok, cfg, None, "train")
    policy = build_policy(base, cfg, len(objectives))
    for name, p in policy.named_parameters():  # as if trained, and a prefix that depends on w
        if "lora_B" in name or "mlp_" in name:
            torch.nn.init.normal_(p, std=0.3)
    data.ref = sequence_scores(policy, data, reference=True)
    task = PreferenceTask(cfg, data)
    records = list(range(1, len(data), 2))
    sums, counts = task.terms(policy, data.batch(records), step=3)
    expect, ws, each = torch.zeros(2, dtype=torch.float64), [], []
    for i in records:
        k = int(data.objective[i])
        conc = np.full(2, 0.2)
        conc[k] += 1
        w = torch.tensor(np.random.default_rng([cfg.seed, 3, i]).dirichlet(conc), dtype=torch.float32)
        ws.append(w)
        b = data.pad([data.chosen[i], data.rejected[i]])
        lp = sequence_logprobs(policy(b["input_ids"], b["attention_mask"], w), b["input_ids"], b["response_mask"])
        ref = torch.as_tensor(data.ref[[data.chosen[i], data.rejected[i]]])
        each.append(float(dpo(lp[:1], lp[1:], ref[:1], ref[1:], cfg.beta).detach()))
        expect[k] += each[-1]
    assert torch.allclose(sums.double(), expect, atol=1e-5)
    assert counts.tolist() == [int((data.objective[records] == k).sum()) for k in range(2)]
    assert len({tuple(w.tolist()) for w in ws}) == len(records)  # not one w for the batch
    # size-biased: a pair's own objective gets the larger weight on average
    assert np.mean([float(w[int(data.objective[i])]) for w, i in zip(ws, records)]) > 0.6
    assert task.weights(3).tolist() == [0.5, 0.5]
    # the same draws whatever batch or process the record lands in
    alone, _ = task.terms(policy, data.batch(records[:1]), step=3)
    assert float(alone[int(data.objective[records[0]])].detach()) == pytest.approx(each[0], abs=1e-5)


def test_distinct_sequences_are_stored_once(tiny_llm, tmp_path):
    _, tok = load_base(str(tiny_llm))
    row = {
        "prompt": "hello",
        "response_0": "the cat sat",
        "response_1": "dog ran far",
        "better_response_id": 0,
        "safer_response_id": 1,
    }
    (tmp_path / "pku.jsonl").write_text(json.dumps(row) + "\n")
    pairs, objectives, _ = load_many(str(tmp_path / "pku.jsonl"))
    data = PreferenceSet.build(pairs, tok, objectives, 64)
    assert len(data) == 2 and len(data.sequences) == 2  # two records, both objectives, two sequences
    assert (data.chosen[0], data.rejected[0]) == (data.rejected[1], data.chosen[1])


def test_over_length_pairs_are_counted(tiny_llm, tiny_pairs):
    _, tok = load_base(str(tiny_llm))
    pairs, objectives, report = load_many(tiny_pairs)
    data = PreferenceSet.build(pairs, tok, objectives, 20, report)
    reason = "longer than 20 tokens"
    assert report.skipped[reason] == len(pairs) - len(data) > 0
    assert ".jsonl:" in report.examples[reason][0]
    assert sum(report.kept.values()) == len(data)
    with pytest.raises(ValueError, match="no train pairs left"):
        load_split(tiny_pairs, tok, cfg_for("x", max_length=8), None, "train")


def test_hf_datasets_path_reads_a_local_dataset(tiny_pairs, tmp_path):
    pytest.importorskip("datasets")
    path = dict(p.split("=") for p in tiny_pairs.split(","))["short"]
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.jsonl").write_text(open(path).read())
    from_file, _, _ = load_many(f"short={path}")
    from_hf, _, _ = load_many(f"short=hf:{tmp_path / 'ds'}@train")
    assert [(p.prompt, p.chosen, p.rejected) for p in from_file] == [(p.prompt, p.chosen, p.rejected) for p in from_hf]


def test_cached_reference_gives_the_same_training(tiny_llm, tiny_pairs, tmp_path):
    a, _ = finetune_llm(tiny_pairs, tmp_path / "a", cfg_for(tiny_llm, max_steps=4), log=quiet)
    b, _ = finetune_llm(tiny_pairs, tmp_path / "b", cfg_for(tiny_llm, max_steps=4, cache_reference=False), log=quiet)
    assert (tmp_path / "a" / "reference_logprobs.safetensors").is_file()
    sa, sb = adapter_state(a), adapter_state(b)
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)
    assert any(
        not torch.equal(v, adapter_state(build_policy(load_base(str(tiny_llm))[0], cfg_for(tiny_llm), 2))[k])
        for k, v in sa.items()
    )


def test_reference_cache_recomputes_only_changed_sets(tiny_llm, tiny_pairs, tmp_path, monkeypatch):
    import cosdpo.training.llm as llm

    base, tok = load_base(str(tiny_llm))
    cfg = cfg_for(tiny_llm)
    train, objectives, _ = load_split(tiny_pairs, tok, cfg, None, "train")
    held, _, _ = load_split(tiny_pairs, tok, cfg, None, "held-out")
    policy = build_policy(base, cfg, len(objectives))
    path = tmp_path / "ref.safetensors"
    llm.reference_logprobs(policy, {"train": train, "vali": held}, cfg, path, progress=False)
    expect_train = train.ref.copy()
    scored = []
    real = reference.sequence_scores
    monkeypatch.setattr(reference, "sequence_scores", lambda p, s, **kw: scored.append(kw["desc"]) or real(p, s, **kw))

    def copy(data, n):  # the same records, ref cleared (subset carries it over)
        out = data.subset(np.arange(n))
        expect, out.ref = out.ref, None
        return out, expect

    (train2, _), (held2, h2) = copy(train, len(train)), copy(held, len(held))
    llm.reference_logprobs(policy, {"train": train2, "vali": held2}, cfg, path, progress=False)
    assert scored == []  # same model, same sequences: all read back
    np.testing.assert_array_equal(train2.ref, expect_train)
    np.testing.assert_array_equal(held2.ref, h2)
    (train3, _), (held3, h3) = copy(train, len(train)), copy(held, len(held) - 1)
    llm.reference_logprobs(policy, {"train": train3, "vali": held3}, cfg, path, progress=False)
    assert scored == ["reference log-probs (vali)"]  # only the changed set is scored again
    np.testing.assert_array_equal(train3.ref, expect_train)
    np.testing.assert_allclose(held3.ref, h3, atol=1e-5)


def test_a_front_shares_the_training_reference_cache(tiny_llm, tiny_pairs, tmp_path, monkeypatch):
    import cosdpo.training.llm as llm

    policy, _ = finetune_llm(tiny_pairs, tmp_path / "p", cfg_for(tiny_llm, max_steps=2), log=quiet)
    cache = tmp_path / "p" / llm.REFERENCE_FILE
    scored = []
    real = llm.sequence_scores
    for module in (llm, reference):  # the policy is scored in llm, the reference in reference
        monkeypatch.setattr(
            module,
            "sequence_scores",
            lambda *a, **kw: scored.append(kw.get("desc") if kw.get("reference") else "w") or real(*a, **kw),
        )
    first = llm.write_front(
        tmp_path / "p", None, tmp_path / "f1", grid=3, policy=policy, progress=False, reference_file=cache
    )
    assert scored.count("reference log-probs (front)") == 1
    scored.clear()
    second = llm.write_front(
        tmp_path / "p", None, tmp_path / "f2", grid=3, policy=policy, progress=False, reference_file=cache
    )
    assert "reference log-probs (front)" not in scored and scored  # read back; the policy is still scored
    assert second["points"] == first["points"] and second["margins"] == first["margins"]
    uncached = llm.write_front(tmp_path / "p", None, tmp_path / "f3", grid=3, policy=policy, progress=False)
    np.testing.assert_allclose(uncached["margins"], first["margins"], atol=1e-6)
    scored.clear()  # the front did not cost training its cache: resuming reads train and vali back
    base, tok = load_base(str(tiny_llm))
    cfg = cfg_for(tiny_llm, max_steps=2)
    sets = {
        name: load_split(tiny_pairs, tok, cfg, None, split)[0]
        for name, split in (("train", "train"), ("vali", "held-out"))
    }
    steps = llm.reference_batches(sets["train"], np.arange(len(sets["train"])), cfg)  # what the 2 steps scored
    llm.reference_logprobs(policy, sets, cfg, cache, progress=False, batches={"train": steps})
    assert scored == []


def test_gradient_accumulation_takes_the_same_step(tiny_llm, tiny_pairs, tmp_path):
    a, _ = finetune_llm(tiny_pairs, tmp_path / "a", cfg_for(tiny_llm, max_steps=3), log=quiet)
    b, _ = finetune_llm(tiny_pairs, tmp_path / "b", cfg_for(tiny_llm, max_steps=3, grad_accum=4), log=quiet)
    sa, sb = adapter_state(a), adapter_state(b)
    assert all(torch.allclose(sa[k], sb[k], atol=1e-5) for k in sa)


def test_prompt_lr_steps_the_prefix_alone(tiny_llm, tiny_pairs, tmp_path):
    """Adam's first step moves each parameter by its group's lr (times sign(grad)): LoRA by lr,
    the Hyper Prompt by prompt_lr."""
    before = adapter_state(build_policy(load_base(str(tiny_llm))[0], cfg_for(tiny_llm), 2))
    policy, _ = finetune_llm(
        tiny_pairs, tmp_path / "p", cfg_for(tiny_llm, max_steps=1, lr=1e-4, prompt_lr=0.1), log=quiet
    )
    moved = {k: float((v - before[k]).abs().max()) for k, v in adapter_state(policy).items()}
    lora = max(v for k, v in moved.items() if "lora" in k)
    prompt = [v for k, v in moved.items() if k.startswith("hpt.")]
    assert lora == pytest.approx(1e-4, rel=1e-2)
    assert len(prompt) == len(list(policy.hpt.parameters())) and all(v == pytest.approx(0.1, rel=1e-2) for v in prompt)


def test_resume_continues_exactly(tiny_llm, tiny_pairs, tmp_path):
    from safetensors.torch import load_file

    finetune_llm(tiny_pairs, tmp_path / "full", cfg_for(tiny_llm, max_steps=6), log=quiet)
    finetune_llm(tiny_pairs, tmp_path / "cut", cfg_for(tiny_llm, max_steps=3), log=quiet)
    finetune_llm(tiny_pairs, tmp_path / "cut", cfg_for(tiny_llm, max_steps=6), resume=True, log=quiet)
    # the last weights (the folders' policies are the best validated ones, and the cut run validated at step 3)
    full, cut = (load_file(str(tmp_path / d / "checkpoint" / "model.safetensors")) for d in ("full", "cut"))
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)
    assert (tmp_path / "cut" / "checkpoint" / "model.safetensors").stat().st_size < 200_000  # never the base
    # the per-step log: the resumed run's is the uninterrupted one's, and each line's rewards add up
    log = {d: [json.loads(x) for x in (tmp_path / d / "steps.jsonl").read_text().splitlines()] for d in ("full", "cut")}
    assert log["full"] == log["cut"] and [r["step"] for r in log["full"]] == list(range(1, 7))
    for r in log["full"]:
        for o in ("short", "cat"):
            if f"loss/{o}" in r:  # the objective had pairs in this step
                assert 0 <= r[f"accuracy/{o}"] <= 1
                assert r[f"margin/{o}"] == pytest.approx(r[f"chosen_reward/{o}"] - r[f"rejected_reward/{o}"], abs=1e-9)


def test_saved_policy_loads_back_exactly(tiny_llm, tiny_pairs, tmp_path):
    policy, _ = finetune_llm(tiny_pairs, tmp_path / "p", cfg_for(tiny_llm, max_steps=2), log=quiet)
    loaded, tok, info = load_policy(tmp_path / "p")
    assert info["objectives"] == ["short", "cat"] and info["beta"] == 0.1
    ids = torch.tensor([[5, 17, 33, 9]])
    mask = torch.ones_like(ids)
    w = torch.tensor([0.2, 0.8])
    assert torch.allclose(policy(ids, mask, w), loaded(ids, mask, w), atol=1e-6)


@pytest.mark.parametrize("lora_rank, prompt_tokens, lora_mix", [(4, 2, False), (0, 4, False), (2, 2, True)])
def test_weights_move_the_margins(tiny_llm, tiny_pairs, tmp_path, lora_rank, prompt_tokens, lora_mix):
    """After training, raising w_k raises objective k's mean margin on the training pairs: with a shared
    LoRA, with the Hyper Prompt alone (then 4 virtual tokens: 2 of width 32 are too few to learn both),
    and with a w-mixed LoRA."""
    cfg = cfg_for(
        tiny_llm,
        max_steps=100,
        lr=1e-2,
        beta=1.0,
        alpha=0.1,
        val_every=10**6,
        lora_rank=lora_rank,
        prompt_tokens=prompt_tokens,
        lora_mix=lora_mix,
    )
    policy, _ = finetune_llm(tiny_pairs, tmp_path / "p", cfg, log=quiet)
    data, _, _ = load_split(tiny_pairs, load_base(str(tiny_llm))[1], cfg, None, "train")
    data.ref = sequence_scores(policy, data, reference=True)
    margins = [
        preference_points(data, sequence_scores(policy, data, torch.tensor(w)), cfg.beta)[1]
        for w in ([1.0, 0.0], [0.5, 0.5], [0.0, 1.0])
    ]
    short, cat = np.array(margins).T
    assert short[0] > short[1] > short[2]
    assert cat[0] < cat[1] < cat[2]


def test_preference_points_by_hand(tiny_llm, tiny_pairs):
    _, tok = load_base(str(tiny_llm))
    data, _, _ = load_split(tiny_pairs, tok, cfg_for(tiny_llm), None, "train")
    rng = np.random.default_rng(0)
    data.ref = rng.normal(size=len(data.sequences))
    scores = data.ref + rng.normal(size=len(data.sequences))
    scores[data.chosen[0]], scores[data.rejected[0]] = data.ref[data.chosen[0]], data.ref[data.rejected[0]]  # a tie
    acc, mean = preference_points(data, scores, 0.5)
    for k in range(2):
        rows = [i for i in range(len(data)) if data.objective[i] == k]
        m = [
            0.5
            * (
                (scores[data.chosen[i]] - data.ref[data.chosen[i]])
                - (scores[data.rejected[i]] - data.ref[data.rejected[i]])
            )
            for i in rows
        ]
        assert acc[k] == pytest.approx(np.mean([1.0 if x > 0 else 0.5 if x == 0 else 0.0 for x in m]))
        assert mean[k] == pytest.approx(np.mean(m))
    same, _ = preference_points(data, data.ref.copy(), 0.5)
    assert same.tolist() == [0.5, 0.5]  # the reference against itself: all ties
    # keep_pairs: every record's margin at every w, in record order, for paired tests between weights
    front = preference_front(
        data, [[1.0, 0.0], [0.0, 1.0]], lambda w: scores if w[0] else data.ref.copy(), 0.5, keep_pairs=True
    )
    by_hand = [
        0.5 * ((scores[c] - data.ref[c]) - (scores[r] - data.ref[r])) for c, r in zip(data.chosen, data.rejected)
    ]
    np.testing.assert_allclose(front["pair_margins"][0], by_hand, rtol=1e-12)
    assert front["pair_margins"][1] == [0.0] * len(data) and front["pair_objective"] == data.objective.tolist()
    assert "pair_margins" not in preference_front(data, [[1.0, 0.0]], lambda w: scores, 0.5)


def test_logprob_shift_is_the_mean_change_per_response_token(tiny_llm, tiny_pairs):
    _, tok = load_base(str(tiny_llm))
    data, _, _ = load_split(tiny_pairs, tok, cfg_for(tiny_llm), None, "train")
    rng = np.random.default_rng(1)
    data.ref = rng.normal(-30, 5, size=len(data.sequences))
    lengths = np.array([len(r) for _, r in data.sequences])
    assert len(set(lengths)) > 1  # else a per-sequence and a per-token shift could not be told apart
    broken = data.ref - 2.5 * lengths  # every response token 2.5 nats less likely
    noisy = data.ref + rng.normal(size=len(data.sequences))
    front = preference_front(
        data,
        [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]],
        lambda w: broken if w[0] == 1 else noisy if w[0] else data.ref.copy(),
        0.5,
    )
    by_hand = sum((noisy[i] - data.ref[i]) / lengths[i] for i in range(len(lengths))) / len(lengths)
    np.testing.assert_allclose(front["logprob_shift"], [-2.5, by_hand, 0.0], rtol=1e-12, atol=1e-12)


def test_prompt_alone_without_lora(tiny_llm, tiny_pairs, tmp_path):
    """lora_rank=0: only the Hyper Prompt trains; no adapter is saved, the reference is the base model,
    and the soup (which mixes LoRA updates) is refused before training."""
    from cosdpo.training.llm_compare import LLMCompareConfig

    policy, metrics = finetune_llm(tiny_pairs, tmp_path / "p", cfg_for(tiny_llm, max_steps=3, lora_rank=0), log=quiet)
    assert metrics["trainable_params"] == sum(p.numel() for p in policy.hpt.parameters())
    assert not (tmp_path / "p" / "adapter_config.json").exists()
    loaded, _, _ = load_policy(tmp_path / "p")
    base, _ = load_base(str(tiny_llm))
    ids, mask = torch.tensor([[5, 17, 33, 9]]), torch.ones(1, 4, dtype=torch.long)
    assert torch.allclose(policy(ids, mask, [0.2, 0.8]), loaded(ids, mask, [0.2, 0.8]), atol=1e-6)
    assert torch.allclose(loaded.reference_logits(ids, mask), base(input_ids=ids, attention_mask=mask).logits)
    with pytest.raises(ValueError, match="need --lora-rank >= 1"):
        LLMCompareConfig(cfg_for(tiny_llm, lora_rank=0), methods=("wcos", "soup"))
    with pytest.raises(ValueError, match="lora_rank >= 0"):
        LLMConfig(lora_rank=-1)
    with pytest.raises(ValueError, match="--lora-mix conditions the LoRA on w"):
        LLMConfig(lora_rank=0, lora_mix=True)
    assert not LLMConfig(method="ls", fixed_weights=(1.0, 0.0), lora_mix=True).lora_mix  # one w: nothing to mix


def test_plain_prompt_ignores_w(tiny_llm):
    base, _ = load_base(str(tiny_llm))
    policy = HPTModel.wrap(add_lora(base, 4), 2, n_tokens=2, conditioned=False)
    ids, mask = torch.tensor([[5, 17, 33]]), torch.ones(1, 3, dtype=torch.long)
    assert torch.equal(policy(ids, mask, [1.0, 0.0]), policy(ids, mask, [0.0, 1.0]))
    assert sum(p.numel() for p in policy.hpt.parameters()) == 2 * policy.cfg.width


def test_config_fails_early():
    with pytest.raises(ValueError, match="--weights"):
        LLMConfig(method="ls")
    with pytest.raises(ValueError, match="simplex"):
        LLMConfig(method="ls", fixed_weights=(0.5, 0.6))
    with pytest.raises(ValueError, match="held_out"):
        LLMConfig(held_out=1.0)
    with pytest.raises(ValueError, match="grad_accum"):
        LLMConfig(batch_size=2, grad_accum=4)
    with pytest.raises(ValueError, match="prompt_mask"):
        LLMConfig(prompt_mask="sigmoid")
    with pytest.raises(ValueError, match="weight_sampling must be one of"):
        LLMConfig(weight_sampling="batch")
    with pytest.raises(ValueError, match="one w per step"):
        LLMConfig(weight_sampling="pair", penalty=0.1)
    with pytest.raises(ValueError, match="precision must be one of"):
        LLMConfig(precision="fp16")
    with pytest.raises(ValueError, match="attention must be one of"):
        LLMConfig(attention="flash")


def test_bf16_policy_keeps_its_precision_and_its_own_reference(tiny_llm, tiny_pairs, tmp_path, monkeypatch):
    """A bf16 run is saved and loaded in bf16 (unless told otherwise), its fronts measured in float32 unless
    asked for bf16 (precision=None: as trained), and it never reads float32
    reference log-probs from a shared cache, nor float32 runs its bf16 ones."""
    import cosdpo.training.llm as llm

    cfg = cfg_for(tiny_llm, max_steps=2, precision="bf16", attention="eager")
    policy, _ = finetune_llm(tiny_pairs, tmp_path / "p", cfg, log=quiet)
    loaded, _, info = load_policy(tmp_path / "p")
    assert (info["config"]["precision"], loaded.precision, loaded.attention) == ("bf16", "bf16", "eager")
    assert load_policy(tmp_path / "p", precision="fp32")[0].precision == "fp32"
    ids, mask, w = torch.tensor([[5, 17, 33, 9]]), torch.ones(1, 4, dtype=torch.long), torch.tensor([0.2, 0.8])
    assert torch.equal(policy(ids, mask, w), loaded(ids, mask, w))
    # the cache: training's bf16 sets are read back by bf16, recomputed by float32
    _, tok = load_base(str(tiny_llm))
    sets = {"train": load_split(tiny_pairs, tok, cfg, None, "train")[0]}
    cache = tmp_path / "p" / llm.REFERENCE_FILE
    scored = []
    real = reference.sequence_scores
    monkeypatch.setattr(reference, "sequence_scores", lambda *a, **kw: scored.append(kw.get("desc")) or real(*a, **kw))
    steps = {"train": llm.reference_batches(sets["train"], np.arange(len(sets["train"])), cfg)}  # the run's
    llm.reference_logprobs(loaded, sets, cfg, cache, progress=False, batches=steps)
    assert scored == []
    bf16_ref = sets["train"].ref.copy()
    llm.reference_logprobs(loaded.set_compute("fp32"), sets, cfg, cache, progress=False, batches=steps)
    assert scored == ["reference log-probs (train)"]
    done = ~np.isnan(bf16_ref)  # the two steps' sequences
    assert done.any() and not np.array_equal(sets["train"].ref[done], bf16_ref[done])
    np.testing.assert_allclose(sets["train"].ref[done], bf16_ref[done], rtol=0.02)
    # a front in float32 of the bf16 policy: its margins near the bf16 front's, not equal
    f16 = llm.write_front(tmp_path / "p", None, tmp_path / "f16", grid=3, progress=False, precision=None)
    f32 = llm.write_front(tmp_path / "p", None, tmp_path / "f32", grid=3, progress=False)
    assert f16["margins"] != f32["margins"]
    np.testing.assert_allclose(f16["margins"], f32["margins"], atol=0.05)


def test_a_short_run_scores_only_the_pairs_its_steps_reach(tiny_llm, tiny_pairs, tmp_path):
    """The reference pass covers the sequences the planned steps use; a resumed, longer run scores the
    rest, and every value equals, to the bit, what an uninterrupted long run computed."""
    from dataclasses import replace

    from safetensors import safe_open

    import cosdpo.training.llm as llm

    cfg = cfg_for(tiny_llm, max_steps=2, batch_size=4)
    long = replace(cfg, max_steps=10)  # still within the first epoch (15 steps of 4 pairs)
    logs = []
    finetune_llm(tiny_pairs, tmp_path / "short", cfg, log=logs.append)
    finetune_llm(tiny_pairs, tmp_path / "long", long, log=quiet)

    def cached(run):
        with safe_open(str(tmp_path / run / llm.REFERENCE_FILE), "pt") as f:
            return f.get_tensor("train").numpy()

    _, tok = load_base(str(tiny_llm))
    full = load_split(tiny_pairs, tok, cfg, None, "train")[0]
    steps = llm.reference_batches(full, np.arange(len(full)), cfg)
    assert len(steps) == 2  # one forward per planned step
    seqs = np.concatenate(steps)
    short, whole = cached("short"), cached("long")
    assert not np.isnan(short[seqs]).any() and np.isnan(short).sum() == len(short) - len(seqs) > len(short) / 2
    assert any(f"the planned steps use {len(seqs)} of the {len(full.sequences)} training" in line for line in logs)
    np.testing.assert_array_equal(short[seqs], whole[seqs])
    finetune_llm(tiny_pairs, tmp_path / "short", long, resume=True, log=quiet)
    np.testing.assert_array_equal(cached("short"), whole)  # NaN where neither run needed a reference
    assert llm.reference_batches(full, np.arange(len(full)), replace(cfg, max_steps=15)) is None  # a whole epoch


@pytest.mark.slow
def test_two_processes_each_score_half_the_reference_pass_and_validation(
    tiny_llm, tiny_pairs, tiny_fold, tiny_base, tmp_path
):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "reference_processes.py"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    args = [str(tiny_llm), tiny_pairs]
    subprocess.run(
        [sys.executable, str(script), *args, str(tmp_path / "one"), str(tiny_fold), str(tiny_base)], check=True, env=env
    )
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    subprocess.run(
        [*launch, str(script), *args, str(tmp_path / "two"), str(tiny_fold), str(tiny_base)], check=True, env=env
    )
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    two = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in (0, 1):  # the gloo group is closed before shutdown (left open, a process can abort at exit)
        assert (tmp_path / "two" / f"rank{r}.exit").read_text() == "True"
    assert one["scored_here"] == one["sequences"] == one["total"]
    halves = [r["scored_here"] for r in two]
    assert sum(halves) == one["sequences"] and min(halves) >= one["sequences"] // 2 - 32  # forwards of <= 32
    # LLM validation: all sequences at each of K w, half on each process
    assert one["vali_sequences_here"] == 2 * one["sequences"]
    halves = [r["vali_sequences_here"] for r in two]
    assert sum(halves) == 2 * one["sequences"] and min(halves) >= one["sequences"] - 64
    # ranking validation: the base pass and the front's pass, each split
    assert one["ranking_groups_here"] == 2 * one["ranking_groups"]
    halves = [r["ranking_groups_here"] for r in two]
    assert sum(halves) == 2 * one["ranking_groups"] and min(halves) >= 0.6 * one["ranking_groups"]
    for r in two:  # every process ends with every value, equal to one process's
        np.testing.assert_allclose(r["ref"], one["ref"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(r["vali_scores"], one["vali_scores"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(r["base_scores"], one["base_scores"], rtol=0, atol=1e-6)
        assert abs(r["hypervolume"] - one["hypervolume"]) < 1e-6
