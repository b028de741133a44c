"""How much faster is a second load of a LETOR file (the .npz cache)?

    python benchmarks/parse_cache.py [--queries 2000] [--data PATH] [--quick]

Prints the first (parse) and second (cache) load times and their ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from cosdpo.data.letor import read_letor
from cosdpo.data.synthetic import write_fold


def timed_loads(path: Path, repeats: int = 3) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as cache:
        os.environ["COSDPO_CACHE"] = cache
        t0 = time.perf_counter()
        read_letor(path)
        first = time.perf_counter() - t0
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            read_letor(path)
            seconds.append(time.perf_counter() - t0)
    return first, min(seconds)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--data", action="append", default=[], help="a LETOR file to time too (repeatable)")
    ap.add_argument("--quick", action="store_true", help="200 synthetic queries")
    args = ap.parse_args()
    if args.quick:
        args.queries = 200
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(f) for f in args.data]
        shared = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mslr-sample" / "train.txt"
        if shared.exists():
            files.append(shared)
        files.append(write_fold(Path(tmp) / "synth", args.queries, 0) / "train.txt")
        for f in files:
            first, second = timed_loads(f)
            size = f.stat().st_size / 1e6
            print(
                f"{f.name:10} {size:7.1f} MB: parse {first:7.3f} s, cached {second:7.4f} s, "
                f"{first / second:6.1f}x faster"
            )


if __name__ == "__main__":
    main()
