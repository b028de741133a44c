"""MSLR-WEB30K-sized data: write, parse, load from the cache, and one epoch of training, with peak memory.

    python benchmarks/web30k_scale.py --out runs/web30k [--queries 31531] [--quick]

Writes a WEB30K-shaped fold with ``cosdpo data synth --lengths mslr``
(31,531 queries, about 3.7 million rows), then runs each stage in a fresh
process so that its peak resident memory is its own:

- parse: the first ``read_letor`` of the three files (the one-time cost);
- load: the training and validation splits from the cache;
- base / wcos: one epoch of base training and one of Weight-COS-DPO.

Memory is printed as a ratio against the float32 size of the feature
matrix the stage holds (rows x 136 x 4 bytes), whole and above what the
process held after its imports; the target is at most 2.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cosdpo.data import RankingSet, make_schema
from cosdpo.data.letor import FOLD_FILES, read_letor
from cosdpo.data.synthetic import LENGTHS, write_fold
from cosdpo.training.ltr import BaseConfig, FinetuneConfig, finetune, train_base

QUICK = dict(d_model=16, n_heads=2, n_layers=1)


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def stage(name: str, fold: Path, out: Path, quick: bool) -> dict:
    """One stage in this process; returns its seconds, rows and peak memory."""
    small = QUICK if quick else {}
    before = peak_bytes()  # the interpreter, torch and the library, before any data
    t0 = time.perf_counter()
    if name == "parse":
        rows = sum(len(read_letor(fold / f).y) for f in FOLD_FILES.values())
    elif name == "load":
        schema = make_schema(136, ["quality1", "quality2"])
        rows = sum(len(RankingSet.load(fold, s, schema).main) for s in ("train", "vali"))
    elif name == "base":
        cfg = BaseConfig(epochs=1, patience=0, progress=False, **small)
        _, m = train_base(fold, out / "base", cfg, overwrite=True)
        rows = sum(len(read_letor(fold / FOLD_FILES[s]).y) for s in ("train", "vali"))
    else:
        cfg = FinetuneConfig(
            objectives=("quality1", "quality2"), epochs=1, min_steps=0, patience=0, progress=False, **small
        )
        _, m = finetune(fold, out / "base", out / "wcos", cfg, overwrite=True)
        rows = sum(len(read_letor(fold / FOLD_FILES[s]).y) for s in ("train", "vali"))
    seconds = time.perf_counter() - t0
    result = {"stage": name, "seconds": seconds, "rows": rows, "peak_bytes": peak_bytes(), "start_bytes": before}
    if name in ("base", "wcos"):
        train_rows = len(read_letor(fold / FOLD_FILES["train"]).y)
        result |= {"train_seconds": m["train_seconds"], "docs_per_s": train_rows / m["train_seconds"]}
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/web30k")
    ap.add_argument("--queries", type=int, default=31531)
    ap.add_argument("--quick", action="store_true", help="300 queries and a tiny model: checks the script")
    ap.add_argument("--stage", help=argparse.SUPPRESS)  # run one stage in this process (the script calls itself)
    args = ap.parse_args()
    out = Path(args.out)
    fold = out / "data"
    if args.stage:
        print(json.dumps(stage(args.stage, fold, out, args.quick)))
        return
    if args.quick:
        args.queries = 300
    if not (fold / "test.txt").exists():
        t0 = time.perf_counter()
        write_fold(fold, args.queries, seed=0, overwrite=True, **LENGTHS["mslr"])
        print(f"write {args.queries:,} queries: {time.perf_counter() - t0:.0f} s", flush=True)
    results = []
    env = os.environ | {"COSDPO_CACHE": str(out / "cache")}  # its own cache, emptied: the parse stage parses
    shutil.rmtree(out / "cache", ignore_errors=True)
    for name in ("parse", "load", "base", "wcos"):
        cmd = [sys.executable, __file__, "--out", str(out), "--stage", name] + ["--quick"] * args.quick
        res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if res.returncode:
            raise SystemExit(f"stage {name} failed:\n{res.stderr[-3000:]}")
        r = json.loads(res.stdout.strip().splitlines()[-1])
        matrix = r["rows"] * 136 * 4
        r["memory_ratio"] = r["peak_bytes"] / matrix
        r["added_ratio"] = (r["peak_bytes"] - r["start_bytes"]) / matrix
        results.append(r)
        line = (
            f"{name:5s} {r['seconds']:8.1f} s  {r['rows']:>10,} rows  peak memory {r['peak_bytes'] / 2**30:.2f} GiB "
            f"= {r['memory_ratio']:.2f} x the float32 matrix ({r['added_ratio']:.2f} x above the "
            f"{r['start_bytes'] / 2**30:.2f} GiB of the imports)"
        )
        if "docs_per_s" in r:
            line += f"  {r['docs_per_s']:,.0f} docs/s"
        print(line, flush=True)
    (out / "scale.json").write_text(json.dumps({"queries": args.queries, "stages": results}, indent=1))


if __name__ == "__main__":
    main()
