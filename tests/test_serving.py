"""Serving: batched scoring, ONNX export, ``ltr predict``, and the real HTTP server on 127.0.0.1."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cosdpo import load_ranker, score_items
from cosdpo.cli import app
from cosdpo.data.letor import read_letor
from cosdpo.server.process import background_server as serving
from cosdpo.server.process import free_port
from cosdpo.serving import OnnxScorer, export_onnx, score_lists

from .conftest import TINY

httpx = pytest.importorskip("httpx")
runner = CliRunner()
FT = dict(objectives=("quality1", "quality2"), batch_size=4, lr=3e-3, **TINY)


@pytest.fixture(scope="module")
def rankers(tiny_fold, tiny_base, tmp_path_factory):
    """Trained tiny rankers of each kind; the conditioned ones' heads made to matter (a few steps leave
    an augment ranker near its base)."""
    import torch

    from cosdpo.models.ranker import save_ranker
    from cosdpo.training.ltr import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("rankers")
    out = {"base": tiny_base}
    for method in ("wcos", "tcos"):
        model, _ = finetune(tiny_fold, tiny_base, root / method, FinetuneConfig(epochs=1, method=method, **FT))
        torch.nn.init.normal_(model.net.head.weight, std=0.5, generator=torch.Generator().manual_seed(1))
        save_ranker(model, root / method)
        out[method] = root / method
    return out


def rows(n, seed=0, width=136):
    return (np.random.default_rng(seed).random((n, width)) * 20).astype(np.float32)


def conditions(kind, i):
    w = [[1.0, 0.0], [0.3, 0.7], [0.5, 0.5], [0.0, 1.0]][i % 4]
    beta = {"base": None, "wcos": [None, 0.5, 3.0, None][i % 4], "tcos": [None, [0.5, 2.0], 4.0, [1.0, 0.2]][i % 4]}
    return (None if kind == "base" else w), beta[kind]


@pytest.mark.parametrize("kind", ["base", "wcos", "tcos"])
def test_one_padded_batch_scores_each_list_as_alone(rankers, kind):
    model = load_ranker(rankers[kind])
    lists = [rows(n, seed=n) for n in (7, 1, 12, 3)]
    conds = [conditions(kind, i) for i in range(4)]
    batched = score_lists(model, lists, [c[0] for c in conds], [c[1] for c in conds])
    for items, (w, b), got in zip(lists, conds, batched):
        np.testing.assert_allclose(got, score_items(model, items, w, b), rtol=1e-5, atol=1e-5)
    if kind != "base":  # the conditions reach the scores: the test can fail
        assert not np.allclose(batched[0][:3], score_lists(model, [lists[0]], [[0.0, 1.0]])[0][:3], atol=1e-3)


@pytest.mark.parametrize("kind", ["base", "wcos", "tcos"])
def test_onnx_export_matches_torch_on_padded_batches(rankers, kind, tmp_path):
    r = runner.invoke(
        app, ["ltr", "export", "--model", str(rankers[kind]), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]
    )
    assert r.exit_code == 0, r.output
    model, onnx = load_ranker(rankers[kind]), OnnxScorer(tmp_path / "m.onnx")
    assert onnx.card["kind"] == {"base": "base", "wcos": "weight-cos", "tcos": "temperature-cos"}[kind]
    for sizes in ((5,), (9, 2, 30)):
        lists = [rows(n, seed=n + 1) for n in sizes]
        conds = [conditions(kind, i + 1) for i in range(len(sizes))]
        ws, bs = [c[0] for c in conds], [c[1] for c in conds]
        for got, want in zip(score_lists(onnx, lists, ws, bs), score_lists(model, lists, ws, bs)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_export_refuses_other_formats(rankers, tmp_path):
    r = runner.invoke(
        app, ["ltr", "export", "--model", str(rankers["wcos"]), "--format", "pmml", "--out", str(tmp_path / "x")]
    )
    assert r.exit_code == 2 and "--format must be onnx" in r.output


def test_predict_writes_one_score_per_row_in_file_order(rankers, tiny_fold, tmp_path):
    # queries interleaved in the file: a query is still scored as one list
    lines = (Path(tiny_fold) / "test.txt").read_text().splitlines()
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("\n".join(lines[::2] + lines[1::2]) + "\n")
    out = tmp_path / "scores.txt"
    args = ["ltr", "predict", "--model", str(rankers["wcos"]), "--data", str(mixed), "--weights", "0.3,0.7"]
    r = runner.invoke(app, [*args, "--beta", "2", "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    scores = np.loadtxt(out)
    data = read_letor(mixed, max_label=None)
    assert len(scores) == len(data.qid) == len(lines)
    model = load_ranker(rankers["wcos"])
    for q in np.unique(data.qid):
        rows_q = np.flatnonzero(data.qid == q)
        np.testing.assert_allclose(
            scores[rows_q], score_items(model, data.X[rows_q], [0.3, 0.7], 2.0), rtol=1e-5, atol=1e-6
        )
    r = runner.invoke(
        app, [*args, "--beta", "2", "--out", str(tmp_path / "onnx.txt"), "--backend", "onnx", "--no-progress"]
    )
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(np.loadtxt(tmp_path / "onnx.txt"), scores, rtol=1e-5, atol=1e-5)
    r = runner.invoke(app, [*args[:-1], "0.3,0.8", "--out", str(tmp_path / "bad.txt")])
    assert r.exit_code == 2 and "simplex" in r.output and not (tmp_path / "bad.txt").exists()


# -- the real server, as a user starts it


def rss_kb(pid) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_bad_folder_stops_serve_at_start_in_one_line(tmp_path):
    for folder in (tmp_path / "missing", tmp_path):
        r = subprocess.run(
            [sys.executable, "-m", "cosdpo", "serve", str(folder), "--port", str(free_port())],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wcos", "tcos"])
def test_rank_endpoint_answers_as_score_items(rankers, kind):
    model = load_ranker(rankers[kind])
    with serving(rankers[kind]) as (url, _), httpx.Client(base_url=url) as client:
        card = client.get("/v1/model").json()
        assert card["objectives"] == ["quality1", "quality2"] and card["K"] == 2 and card["features"] == 136
        assert card["beta"] == model.beta and card["inputs"] == 131
        queries = []
        for i, n in enumerate((6, 1, 15)):
            w, b = conditions(kind, i)
            queries.append({"items": rows(n, seed=i).tolist(), "weights": w} | ({} if b is None else {"beta": b}))
        r = client.post("/v1/rank", json={"queries": queries})
        assert r.status_code == 200, r.text
        for q, res in zip(queries, r.json()["results"]):
            want = score_items(model, q["items"], q["weights"], q.get("beta"))
            np.testing.assert_allclose(res["scores"], want, rtol=1e-5, atol=1e-5)
            assert res["order"] == np.argsort(-np.asarray(res["scores"]), kind="stable").tolist()

        # concurrent clients, a w each: gathered into fewer forwards, every answer its own
        def one(i):
            items, w = rows(20, seed=100 + i), [i / 31, 1 - i / 31]
            got = client.post("/v1/rank", json={"queries": [{"items": items.tolist(), "weights": w}]})
            return np.asarray(got.json()["results"][0]["scores"]), score_items(model, items, w)

        before = client.get("/v1/model").json()["batching"]
        with ThreadPoolExecutor(16) as pool:
            for got, want in pool.map(one, range(32)):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        after = client.get("/v1/model").json()["batching"]
        assert after["requests"] - before["requests"] == 32
        assert after["batches"] - before["batches"] < 32  # some requests shared a forward


BAD_RANK = [
    ({"queries": [{"items": [[0.5] * 136], "weights": [0.3, 0.8]}]}, ["queries", 0, "weights"], "simplex"),
    ({"queries": [{"items": [[0.5] * 136], "weights": [1.0]}]}, ["queries", 0, "weights"], "2"),
    ({"queries": [{"items": [[0.5] * 136], "weights": [0.5, 0.5], "beta": 0}]}, ["queries", 0, "beta"], "> 0"),
    ({"queries": [{"items": [[0.5] * 136], "weights": [0.5, 0.5], "beta": [1, 2]}]}, ["queries", 0, "beta"], "one"),
    ({"queries": [{"items": [[0.5] * 7], "weights": [0.5, 0.5]}]}, ["queries", 0, "items"], "136"),
    ({"queries": [{"items": [], "weights": [0.5, 0.5]}]}, ["queries", 0, "items"], "at least 1"),
    ({"queries": [{"items": [[0.5] * 136, [0.5] * 3], "weights": [0.5, 0.5]}]}, ["queries", 0, "items"], "same length"),
    ({"queries": []}, ["queries"], "at least 1"),
    ({"queries": [{"items": [[0.5] * 136]}]}, ["queries", 0, "weights"], "needs weights"),
    ({"queries": [{"items": [["1"] * 136], "weights": [0.5, 0.5]}]}, ["queries", 0, "items", 0, 0], "number"),
    ({"queries": [{"items": [[0.5] * 136], "weight": [0.5, 0.5]}]}, ["queries", 0, "weight"], "not permitted"),
]


HUGE = [
    json.dumps({"queries": [{"items": [[1.0]] * 20_001, "weights": [0.5, 0.5]}]}).encode(),  # over --max-items
    json.dumps({"queries": [{"items": [[1.0] * 136], "weights": [0.5] * 100_000}]}).encode(),
]
SHAPES = [None, 1, "x", [], {}, {"queries": None}, {"queries": "a"}, {"queries": [None]}, {"queries": [{"items": {}}]}]


def malformed(rng, i):
    """Request bodies a server meets: broken JSON, wrong types, NaN, huge arrays, random bytes."""
    good = {"items": rows(3, seed=i).tolist(), "weights": [0.5, 0.5]}
    choice = i % 10
    if choice == 0:
        return rng.bytes(int(rng.integers(1, 400)))
    if choice == 1:
        return json.dumps({"queries": [good]}).encode()[: int(rng.integers(1, 60))]
    if choice == 2:
        return b'{"queries": [{"items": [[NaN, Infinity]], "weights": [0.5, 0.5]}]}'
    if choice == 3:
        return HUGE[i % 2]
    if choice == 4:
        return json.dumps(SHAPES[int(rng.integers(len(SHAPES)))]).encode()
    if choice == 5:
        return json.dumps({"queries": [good | {"weights": rng.normal(size=int(rng.integers(0, 5))).tolist()}]}).encode()
    if choice == 6:
        return json.dumps({"queries": [good | {"beta": [-1.0, 0.0, "1", [2.0, 3.0]][int(rng.integers(4))]}]}).encode()
    if choice == 7:
        return json.dumps({"queries": [{"items": [[[1.0]]], "weights": [0.5, 0.5]}]}).encode()
    if choice == 8:
        return json.dumps({"queries": [{"items": "abc", "weights": {"a": 1}}]}).encode()
    return json.dumps(
        {"queries": [{"items": [[1e39] * 136], "weights": [0.5, 0.5]}] * int(rng.integers(1, 4))}
    ).encode()


@pytest.mark.slow
def test_bad_requests_get_4xx_naming_the_field_and_the_server_stays_up(rankers):
    model = load_ranker(rankers["wcos"])
    with serving(rankers["wcos"], "--max-body-mb", "4") as (url, proc), httpx.Client(base_url=url, timeout=30) as c:
        for body, loc, words in BAD_RANK:
            r = c.post("/v1/rank", json=body)
            assert r.status_code == 422, (body, r.text)
            detail = r.json()["detail"][0]
            assert detail["loc"][1:] == loc and words in detail["msg"], detail
        many = {"queries": [{"items": [[0.5]] * 100, "weights": [0.5, 0.5]}] * 201}
        r = c.post("/v1/rank", json=many)
        assert r.status_code == 413 and "the most is 20000" in r.json()["detail"][0]["msg"]
        r = c.post("/v1/rank", content=b"[" + b"1," * 2_500_000 + b"1]", headers={"content-type": "application/json"})
        assert r.status_code == 413 and "4 MB" in r.text

        good = {"queries": [{"items": rows(8).tolist(), "weights": [0.2, 0.8]}]}
        want = score_items(model, good["queries"][0]["items"], [0.2, 0.8])
        for _ in range(20):  # warm: allocator pools settle before the baseline
            c.post("/v1/rank", json=good)
        start_rss = rss_kb(proc.pid)
        rng, statuses = np.random.default_rng(0), {}
        for i in range(1000):
            ctype = "application/json" if i % 7 else "text/plain"
            r = c.post("/v1/rank", content=malformed(rng, i), headers={"content-type": ctype})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code < 500, (i, r.text)
            assert r.json()["detail"][0]["loc"][0] == "body"
        assert set(statuses) <= {400, 413, 422} and statuses.get(422, 0) > 500, statuses
        assert proc.poll() is None
        r = c.post("/v1/rank", json=good)
        np.testing.assert_allclose(r.json()["results"][0]["scores"], want, rtol=1e-5, atol=1e-5)
        assert rss_kb(proc.pid) < 1.10 * start_rss


@pytest.mark.slow
def test_onnx_backend_serves_the_same_scores(rankers):
    model = load_ranker(rankers["tcos"])
    with serving(rankers["tcos"], "--backend", "onnx") as (url, _):
        assert httpx.get(url + "/v1/model").json()["backend"] == "onnx"
        q = {"items": rows(9).tolist(), "weights": [0.3, 0.7], "beta": [0.5, 2.0]}
        got = httpx.post(url + "/v1/rank", json={"queries": [q]}).json()["results"][0]["scores"]
        np.testing.assert_allclose(got, score_items(model, q["items"], q["weights"], q["beta"]), rtol=1e-5, atol=1e-5)


def test_export_file_is_stamped(rankers, tmp_path):
    path = export_onnx(load_ranker(rankers["wcos"]), tmp_path / "w.onnx")
    scorer = OnnxScorer(path)
    assert scorer.card["objectives"] == ["quality1", "quality2"] and len(scorer.schema.inputs) == 131
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        OnnxScorer(tmp_path / "junk.onnx")


# -- the LLM server


@pytest.fixture(scope="module")
def policy_dir(tiny_llm, tiny_pairs, tmp_path_factory):
    """A tiny trained policy whose prompt module and LoRA are made to matter, so that w changes answers."""
    pytest.importorskip("peft")
    import torch

    from cosdpo.models.llm import load_policy, read_policy_info, save_policy
    from cosdpo.training.llm import LLMConfig, finetune_llm

    out = tmp_path_factory.mktemp("policy") / "p"
    cfg = LLMConfig(model=str(tiny_llm), max_steps=1, batch_size=8, held_out=0.25, prompt_tokens=2, progress=False)
    finetune_llm(tiny_pairs, out, cfg, log=lambda *_: None)
    policy, tokenizer, info = load_policy(out)
    g = torch.Generator().manual_seed(0)
    for name, p in policy.named_parameters():
        if "lora_B" in name or "mlp_a.2" in name or "mlp_b.2" in name:
            torch.nn.init.normal_(p, std=0.6, generator=g)
    save_policy(policy, tokenizer, out, info)
    assert read_policy_info(out)["objectives"] == info["objectives"]
    return out


PROMPTS = ["hello there", "what is a cat", "tell me more about the sea", "why"]


@pytest.mark.slow
def test_llm_endpoints_answer_as_generate(policy_dir):
    openai = pytest.importorskip("openai")
    from cosdpo import generate, load_policy

    policy, tokenizer, info = load_policy(policy_dir)
    ws = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.8]]
    want = {
        (p, tuple(w), b): generate(policy, tokenizer, [p], w, beta=info["beta"], beta_prime=b, max_new_tokens=12)[0]
        for p in PROMPTS
        for w in ws
        for b in (None, 0.3)
    }
    assert len({want[(PROMPTS[0], tuple(w), None)] for w in ws}) > 1  # w changes the answer: the test can fail
    with serving(policy_dir) as (url, _), httpx.Client(base_url=url, timeout=120) as c:
        card = c.get("/v1/model").json()
        assert card["type"] == "llm" and card["objectives"] == info["objectives"] and card["beta"] == info["beta"]

        def ask(key):
            p, w, b = key
            body = {"prompt": p, "weights": list(w), "max_new_tokens": 12} | ({} if b is None else {"beta": b})
            r = c.post("/v1/generate", json=body)
            assert r.status_code == 200, r.text
            return r.json()["text"]

        # 8 clients at once, each its own w and beta': one decoding loop, every answer its own
        before = c.get("/v1/model").json()["batching"]
        with ThreadPoolExecutor(8) as pool:
            got = dict(zip(want, pool.map(ask, want)))
        assert got == want
        after = c.get("/v1/model").json()["batching"]
        assert after["batches"] - before["batches"] < len(want)

        client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        chat = client.chat.completions.create(
            model="p",
            messages=[{"role": "user", "content": PROMPTS[1]}],
            max_tokens=12,
            temperature=0,
            extra_body={"weights": [0.2, 0.8], "beta": 0.3},
        )
        assert chat.choices[0].message.content == want[(PROMPTS[1], (0.2, 0.8), 0.3)]
        assert chat.choices[0].finish_reason in ("stop", "length") and chat.usage.completion_tokens > 0
        stream = client.chat.completions.create(
            model="p",
            messages=[{"role": "user", "content": PROMPTS[1]}],
            max_tokens=12,
            temperature=0,
            stream=True,
            extra_body={"weights": [0.2, 0.8], "beta": 0.3},
        )
        pieces = [e.choices[0].delta.content or "" for e in stream]
        assert len(pieces) > 2 and "".join(pieces).strip() == want[(PROMPTS[1], (0.2, 0.8), 0.3)]

        # sampling is seeded per request, whatever else shares its batch
        body = {"prompt": PROMPTS[0], "weights": [0.5, 0.5], "max_new_tokens": 8, "do_sample": True, "seed": 3}
        assert len({c.post("/v1/generate", json=body).json()["text"] for _ in range(3)}) == 1
        for bad, field in (
            ({"weights": [0.5, 0.6]}, "weights"),
            ({"weights": [1.0]}, "weights"),
            ({"beta": 0.0}, "beta"),
            ({"max_new_tokens": 100_000}, "max_new_tokens"),
            ({"do_sample": True, "temperature": 0.0}, "body"),
        ):
            r = c.post("/v1/generate", json={"prompt": "hi", "weights": [0.5, 0.5]} | bad)
            assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == field, r.text
        r = c.post("/v1/generate", json={"prompt": "hi " * 3000, "weights": [0.5, 0.5]})
        assert r.status_code == 413, r.text
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "weights": [2, -1]})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "weights"]
        assert ask((PROMPTS[2], (0.5, 0.5), None)) == want[(PROMPTS[2], (0.5, 0.5), None)]  # still serving


@pytest.mark.slow
def test_a_ray_serve_deployment_answers_as_the_server(rankers):
    """The optional Ray Serve wrapper, on a local Ray instance (skipped where ray is not installed)."""
    pytest.importorskip("ray.serve")
    import ray
    from ray import serve

    from cosdpo.server.ray_serve import app_builder

    model = load_ranker(rankers["wcos"])
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(app_builder({"model_dir": str(rankers["wcos"]), "replicas": "2", "max_batch": "8"}), blocking=False)
        q = {"items": rows(7).tolist(), "weights": [0.3, 0.7], "beta": 2.0}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/rank", json={"queries": [q]}, timeout=60)
        want = score_items(model, q["items"], q["weights"], q["beta"])
        np.testing.assert_allclose(r.json()["results"][0]["scores"], want, rtol=1e-5, atol=1e-5)
        bad = httpx.post(f"http://127.0.0.1:{port}/v1/rank", json={"queries": [q | {"weights": [1, 1]}]}, timeout=60)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "queries", 0, "weights"]
    finally:
        serve.shutdown()
        ray.shutdown()
    with pytest.raises(ValueError, match="unknown option"):
        app_builder({"model_dir": str(rankers["wcos"]), "max_bath": "8"})
