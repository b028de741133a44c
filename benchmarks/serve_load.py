"""Load on ``cosdpo serve`` from 127.0.0.1: requests/s and latency, batching on against off.

    python benchmarks/serve_load.py [--requests 400] [--seconds 60] [--model smollm2]

Ranking: 100-item lists (136 features) with a random w per request, at 1, 4
and 16 concurrent clients, against a server that gathers requests into one
forward and one that runs a forward per request (``--no-batching``), and
against two worker processes. The ranker has the default sizes (a width-128
base and a width-64 conditioned network); its weights are random, which
changes nothing about speed. LLM: 8 prompts with 8 different w at once
against the same 8 one at a time, in new tokens/s (greedy, a fixed number of
new tokens). Every run is bounded: a fixed request count and a time limit,
and the load generator targets 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from cosdpo.data import make_schema
from cosdpo.models.ranker import BaseRanker, ConditionedRanker, ScorerConfig, save_ranker
from cosdpo.server.process import background_server


async def load(url: str, path: str, bodies: list[bytes], clients: int, requests: int, seconds: float):
    """Send ``requests`` bodies from ``clients`` concurrent connections (or stop at ``seconds``)."""
    latencies, answers, sent = [], [], iter(range(requests))
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:

        async def worker():
            for i in sent:
                if time.perf_counter() > deadline:
                    return
                t0 = time.perf_counter()
                r = await client.post(
                    path, content=bodies[i % len(bodies)], headers={"content-type": "application/json"}
                )
                r.raise_for_status()
                latencies.append(time.perf_counter() - t0)
                answers.append(r.json())

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1000
    return {
        "requests": len(lat),
        "per_second": len(lat) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "wall_s": wall,
        "answers": answers,
    }


def ranker_folder(root: Path) -> Path:
    schema = make_schema(136, ["quality1", "quality2"])
    model = ConditionedRanker(BaseRanker(schema, ScorerConfig()), schema, ScorerConfig(d_model=64))
    save_ranker(model, root / "ranker")
    return root / "ranker"


def ranking(root: Path, requests: int, seconds: float, clients_list, quick: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    bodies = []
    for _ in range(64):
        w = rng.dirichlet([1.0, 1.0])
        items = (rng.random((100, 136)) * 20).round(3).tolist()
        bodies.append(json.dumps({"queries": [{"items": items, "weights": w.tolist()}]}).encode())
    folder = ranker_folder(root)
    rows = []
    servers = [("one forward per request", ["--no-batching"]), ("batched", [])]
    backends = ("torch",) if quick else ("torch", "onnx")  # an ONNX export takes 20 s at start
    servers = [(f"{b}, {name}", [*options, "--backend", b]) for b in backends for name, options in servers]
    if not quick:
        servers.append(
            ("onnx, batched, 2 workers x 1 thread", ["--backend", "onnx", "--workers", "2", "--threads", "1"])
        )
    for name, options in servers:
        with background_server(folder, *options) as (url, _):
            asyncio.run(load(url, "/v1/rank", bodies, 4, 20, seconds))  # warm-up
            for clients in clients_list:
                r = asyncio.run(load(url, "/v1/rank", bodies, clients, requests, seconds))
                rows.append({"server": name, "clients": clients} | {k: v for k, v in r.items() if k != "answers"})
                print(
                    f"rank  {name:30} {clients:3d} clients  {r['per_second']:8.1f} req/s  "
                    f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  ({r['requests']} requests)",
                    flush=True,
                )
    return rows


def policy_folder(root: Path, model: str) -> Path:
    """A one-step policy (its weights do not matter for speed) through the real training path."""
    from cosdpo.training.llm import LLMConfig, finetune_llm

    files = {}
    for obj in ("a", "b"):
        rows = [{"prompt": f"question {i}", "chosen": "yes " * (1 + i % 3), "rejected": "no " * 4} for i in range(8)]
        files[obj] = root / f"{obj}.jsonl"
        files[obj].write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = ",".join(f"{k}={v}" for k, v in files.items())
    cfg = LLMConfig(model=model, max_steps=1, batch_size=2, held_out=0.25, max_length=64, progress=False)
    finetune_llm(data, root / "policy", cfg, log=lambda *_: None)
    return root / "policy"


PROMPTS = [
    "How do I bake bread?",
    "Name three rivers in Europe.",
    "What is a prime number?",
    "Give me a tip for sleeping well.",
    "Why is the sky blue?",
    "How do plants grow?",
    "What does a compiler do?",
    "Tell me about the moon.",
]


def generation(root: Path, model: str, tokens: int, seconds: float) -> list[dict]:
    folder = policy_folder(root, model)
    ws = np.linspace(0, 1, len(PROMPTS))
    bodies = [
        json.dumps({"prompt": p, "weights": [float(w), float(1 - w)], "max_new_tokens": tokens}).encode()
        for p, w in zip(PROMPTS, ws)
    ]
    rows = []
    for name, options, clients in (("one prompt at a time", ["--no-batching"], 1), ("8 prompts batched", [], 8)):
        with background_server(folder, *options) as (url, _):
            asyncio.run(load(url, "/v1/generate", bodies[:1], 1, 1, seconds))  # warm-up
            r = asyncio.run(load(url, "/v1/generate", bodies, clients, len(bodies), seconds))
            new = sum(a["usage"]["completion_tokens"] for a in r["answers"])
            row = {"server": name, "clients": clients, "tokens_per_second": new / r["wall_s"]}
            rows.append(row | {k: v for k, v in r.items() if k != "answers"})
            print(
                f"llm   {name:30} {clients:3d} clients  {row['tokens_per_second']:8.1f} tokens/s  "
                f"p50 {r['p50_ms']:7.0f} ms  ({r['requests']} prompts, {new} new tokens)",
                flush=True,
            )
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=400, help="Ranking requests per setting.")
    ap.add_argument("--seconds", type=float, default=60, help="Time limit per setting.")
    ap.add_argument("--model", default="smollm2", help="The LLM policy's base model (a folder or a hub id).")
    ap.add_argument("--tokens", type=int, default=32, help="New tokens per prompt.")
    ap.add_argument("--out", type=Path, help="Write the figures as JSON here.")
    ap.add_argument("--quick", action="store_true", help="40 requests, 1 and 16 clients, torch only, 8 new tokens")
    args = ap.parse_args()
    clients = (1, 4, 16)
    if args.quick:
        args.requests, args.seconds, args.tokens, clients = 40, 30, 8, (1, 16)
    with tempfile.TemporaryDirectory() as tmp:
        rank_rows = ranking(Path(tmp), args.requests, args.seconds, clients, args.quick)
        llm_rows = generation(Path(tmp), args.model, args.tokens, args.seconds * 4)
    by = {(r["server"], r["clients"]): r["per_second"] for r in rank_rows}
    c = clients[-1]
    for b in ("torch", "onnx"):
        if (f"{b}, batched", c) in by:
            ratio = by[(f"{b}, batched", c)] / by[(f"{b}, one forward per request", c)]
            print(f"ranking ({b}) at {c} clients: batched / one forward per request = {ratio:.2f}x requests/s")
    llm_ratio = llm_rows[1]["tokens_per_second"] / llm_rows[0]["tokens_per_second"]
    print(f"LLM, 8 prompts of different w: batched / one at a time = {llm_ratio:.2f}x tokens/s")
    if args.out:
        args.out.write_text(json.dumps({"ranking": rank_rows, "llm": llm_rows}, indent=1))


if __name__ == "__main__":
    main()
