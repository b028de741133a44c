import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from cosdpo.data.tokenize import encode_pair, pad_sequences, prompt_ids  # noqa: E402
from cosdpo.losses import dpo, lipo, response_window, sequence_logprobs  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    from tests.tiny_llm import make_tokenizer

    return make_tokenizer()


def test_encode_marks_exactly_the_response(tokenizer):
    prompt = ({"role": "user", "content": "how are you"},)
    p, c, r, cut = encode_pair(tokenizer, prompt, "the cat sat", "hello", 64)
    enc = [(p, c), (p, r)]
    assert not cut
    batch = pad_sequences(enc, tokenizer.pad_token_id)
    for i, text in enumerate(["the cat sat", "hello"]):
        ids = batch["input_ids"][i][batch["response_mask"][i]].tolist()
        assert tokenizer.decode(ids) == text + "</s>"
        assert (
            tokenizer.decode(batch["input_ids"][i][: len(enc[i][0])].tolist()) == "<|user|>how are you</s><|assistant|>"
        )
    assert batch["attention_mask"].sum(1).tolist() == [len(p) + len(r) for p, r in enc]
    assert encode_pair(tokenizer, prompt, "hello", "the cat sat on the mat " * 10, 16) is None


def response_len(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + EOS


def test_encode_pair_cuts_the_earliest_whole_turns(tokenizer):
    turns = (
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "hello world"},
        {"role": "assistant", "content": "how are you"},
        {"role": "user", "content": "the cat sat"},
    )
    chosen, rejected = "short answer", "the dog ran far away please"
    longest = max(response_len(tokenizer, chosen), response_len(tokenizer, rejected))
    full = len(prompt_ids(tokenizer, turns))
    p, _, _, cut = encode_pair(tokenizer, turns, chosen, rejected, full + longest)
    assert p == prompt_ids(tokenizer, turns) and not cut  # fits: untouched
    p, c, r, cut = encode_pair(tokenizer, turns, chosen, rejected, full + longest - 1)  # the longer response decides
    assert cut and tokenizer.decode(p) == "<|system|>be kind</s><|user|>the cat sat</s><|assistant|>"
    assert tokenizer.decode(c) == chosen + "</s>" and tokenizer.decode(r) == rejected + "</s>"
    assert encode_pair(tokenizer, turns, chosen, rejected, full + longest - 1, truncate=False) is None
    last = len(p)
    assert encode_pair(tokenizer, turns, chosen, rejected, last + longest) is not None
    assert encode_pair(tokenizer, turns, chosen, rejected, last + longest - 1) is None  # never mid-turn


def test_sequence_logprobs_against_a_loop_and_padding():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 11, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 11, (2, 7), generator=g)
    resp = torch.tensor([[0, 0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    got = sequence_logprobs(logits, ids, resp)
    for b in range(2):
        want = sum(torch.log_softmax(logits[b, t - 1], -1)[ids[b, t]] for t in range(7) if resp[b, t])
        assert got[b].item() == pytest.approx(want.item(), rel=1e-9)
    padded = sequence_logprobs(
        torch.cat([logits, torch.randn(2, 3, 11, dtype=torch.float64)], 1),
        torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1),
        torch.cat([resp, torch.zeros(2, 3, dtype=torch.bool)], 1),
    )
    torch.testing.assert_close(padded, got)


def test_logits_of_the_response_window_only_give_the_same_logprobs():
    """The last response_window positions' logits score what all positions' do; fewer cannot."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 9, 11, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 11, (3, 9), generator=g)
    resp = torch.zeros(3, 9, dtype=torch.bool)
    resp[0, 5:8], resp[1, 4:9], resp[2, 6:7] = True, True, True  # right padding after row 0's and row 2's
    keep = response_window(resp)
    assert keep == 9 - 3  # positions 3..8: position 3 predicts the first response token (4)
    torch.testing.assert_close(sequence_logprobs(logits[:, -keep:], ids, resp), sequence_logprobs(logits, ids, resp))
    with pytest.raises(ValueError, match="miss response tokens"):
        sequence_logprobs(logits[:, -(keep - 1) :], ids, resp)
    assert response_window(torch.zeros(2, 5, dtype=torch.bool)) == 2  # nothing to score: the smallest window
    first = torch.zeros(1, 4, dtype=torch.bool)
    first[0, 0] = True  # a "response" at position 0 has no logit before it: every position kept
    assert response_window(first) == 4


def test_packed_pair_logprobs_against_a_loop_and_the_window():
    """pair_logprobs on pack_pairs rows: each response token's log-softmax at the position that predicts
    it, the rejected response's first token at the prompt's last position; a smaller window fails."""
    from cosdpo.data.tokenize import pack_pairs
    from cosdpo.losses import pair_logprobs, pair_window

    triples = [([1, 2, 3], [4, 5], [6, 7, 8]), ([1, 9], [3, 3, 3, 3], [5]), ([2, 2, 2, 2], [7], [8, 9])]
    b = pack_pairs(triples, pad_id=0)
    T = b["input_ids"].shape[1]
    assert T == 8 and b["position_ids"][0, 5:8].tolist() == [3, 4, 5]  # rejected at the chosen one's positions
    logits = torch.randn(3, T, 11, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    chosen, rejected = pair_logprobs(logits, b)
    for row, (p, c, r) in enumerate(triples):
        lsm = torch.log_softmax(logits[row], -1)
        want_c = sum(lsm[len(p) - 1 + t, tok] for t, tok in enumerate(c))
        at_r = [len(p) - 1] + [len(p) + len(c) + t for t in range(len(r) - 1)]
        want_r = sum(lsm[at, tok] for at, tok in zip(at_r, r))
        assert chosen[row].item() == pytest.approx(want_c.item(), rel=1e-9)
        assert rejected[row].item() == pytest.approx(want_r.item(), rel=1e-9)
    keep = pair_window(b)
    assert keep == T - 1  # row 1's prompt ends at position 1
    torch.testing.assert_close(pair_logprobs(logits[:, -keep:], b), (chosen, rejected))
    with pytest.raises(ValueError, match="miss response tokens"):
        pair_logprobs(logits[:, -(keep - 1) :], b)


def test_lipo_on_sequence_scores_is_dpo():
    g = torch.Generator().manual_seed(1)
    pol, ref = torch.randn(4, 2, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)
    labels = torch.tensor([[1.0, 0.0]] * 4, dtype=torch.float64)
    mask = torch.ones(4, 2, dtype=torch.bool)
    torch.testing.assert_close(
        lipo(pol, ref, labels, mask, 0.1, "l1", reduction="none")[0],
        dpo(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], 0.1, reduction="none")[0],
    )
