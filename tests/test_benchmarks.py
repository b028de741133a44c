"""Every script in benchmarks/ runs in its --quick mode and prints its figures, so none rots unnoticed.

Each runs as a user would run it (a subprocess in a scratch folder); the
check is on the line that carries the benchmark's result, parsed as a number.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import MSLR_SAMPLE, SHARED, requires_shared

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
HH = SHARED / "hh-rlhf"
SCRIPTS = sorted(p.name for p in [*BENCH.glob("*.py"), *BENCH.glob("*.sh")])


def bench(script, *args, cwd):
    res = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res.stdout


def number(pattern, text):
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in:\n{text[-2000:]}"
    return float(found.group(1))


@pytest.mark.slow
def test_ranking_benchmarks(tmp_path):
    out = bench("compare.py", "--out", tmp_path / "c", cwd=tmp_path)
    assert number(r"hypervolume  wcos / ls = ([\d.]+)", out) > 0
    out = bench("wcos_budget.py", "--out", tmp_path / "c", "--budget-ratio", "0.5", cwd=tmp_path)
    assert number(r"wcos .*\(([\d.]+) of DPO-LS\), main", out) > 0
    ls_steps, wcos_steps = (int(n) for n in re.findall(r"(\d+) steps \(", out))  # compare's rule: half of DPO-LS's
    assert wcos_steps == max(1, round(0.5 * ls_steps))
    out = bench("throughput.py", cwd=tmp_path)
    assert number(r"Weight-COS-DPO\s+[\d.]+\s+([\d.]+)", out) > 0  # documents per second
    assert number(r"base / allRank 1.4.3: ([\d.]+)x the docs/s", out) > 0  # allRank's own step, same rows
    out = bench("parse_cache.py", cwd=tmp_path)
    assert number(r"([\d.]+)x faster", out) > 1
    out = bench("temperature.py", "--out", tmp_path / "t", cwd=tmp_path)
    assert (tmp_path / "t" / "figure3.png").read_bytes()[:4] == b"\x89PNG" and "cross_temperature" in out


@pytest.mark.slow
@requires_shared(HH / "helpful.jsonl.gz")
def test_llm_benchmarks(tiny_llm, tmp_path):
    helpful = HH / "helpful.jsonl.gz"
    out = bench("logits_window.py", "--model", tiny_llm, "--data", helpful, cwd=tmp_path)
    assert number(r"training step: .* ratio ([\d.]+) \(log-probs differ by at most", out) > 0
    out = bench("precision.py", "--model", tiny_llm, "--data", helpful, cwd=tmp_path)
    assert number(r"bf16 \+ eager: training step [\d.]+ s, ratio ([\d.]+)", out) > 0
    out = bench("trl_step.py", "--model", tiny_llm, "--data", helpful, cwd=tmp_path)
    assert number(r"ratio ours / TRL, median step: ([\d.]+) against TRL with its reference cached", out) > 0
    assert number(r"one epoch \(steps and reference pass\): ([\d.]+)", out) > 0
    assert number(r"with precompute_ref_log_probs .*; reference pass ([\d.]+) s", out) > 0
    out = bench("hh_front.py", "--model", tiny_llm, "--data", HH, "--out", tmp_path / "hh", cwd=tmp_path)
    assert 0 <= number(r"hypervolume ([\d.]+)", out) <= 1
    assert "length-balanced accuracy" in out
    res = subprocess.run(
        [
            sys.executable,
            str(BENCH / "hh_front.py"),
            "--summarize",
            str(tmp_path / "hh" / "front.json"),
            "--plot",
            str(tmp_path / "mean.png"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert res.returncode == 0 and "1 runs; mean held-out accuracy" in res.stdout, res.stderr[-2000:]


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu(tiny_llm, tmp_path):
    """benchmarks/gpu_check.sh is known to work before a GPU is ever lent."""
    res = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--device", "cpu", "--quick", "--model", str(tiny_llm)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env=os.environ | {"PYTHON": sys.executable},
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    for precision in ("fp32", "bf16"):
        assert f"cpu {precision} matmul" in res.stdout
    assert number(r"ratio ours / TRL, median step: ([\d.]+) against", res.stdout) > 0
    assert "cpu bf16" in res.stdout.split("SmolLM2 training step")[1]


@pytest.mark.slow
def test_serving_load_benchmark(tiny_llm, tmp_path):
    out = bench("serve_load.py", "--model", tiny_llm, cwd=tmp_path)
    assert number(r"ranking \(torch\) at 16 clients: batched / one forward per request = ([\d.]+)x", out) > 0
    assert number(r"batched / one at a time = ([\d.]+)x tokens/s", out) > 0


def test_every_benchmark_has_a_quick_test():
    """A new script in benchmarks/ must join a test above (and so carry a --quick mode)."""
    source = Path(__file__).read_text()
    missing = [s for s in SCRIPTS if f'"{s}"' not in source]
    assert not missing, f"benchmarks without a --quick test: {missing}"


def test_web30k_scale_benchmark(tmp_path):
    out = bench("web30k_scale.py", "--out", tmp_path / "w", cwd=tmp_path).replace(",", "")
    assert number(r"load .*? (\d+) rows", out) > 20_000  # train + vali of 300 queries of MSLR's lengths
    assert number(r"wcos .* (\d+) docs/s", out) > 0
    stages = json.loads((tmp_path / "w" / "scale.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["parse", "load", "base", "wcos"]


@pytest.mark.slow
@requires_shared()
def test_real_mslr_benchmark(tmp_path):
    out = bench("real_mslr.py", "--data", MSLR_SAMPLE, "--out", tmp_path / "r", cwd=tmp_path)
    assert number(r"K=2 wcos / ls: hypervolume x([\d.]+)", out) > 0
    assert 0.2 < number(r"K=2 wcos / ls: .* steps x([\d.]+)", out) < 0.4  # the compare rule: 0.3 of DPO-LS's steps
    runs = json.loads((tmp_path / "r" / "results.json").read_text())["runs"]
    assert set(runs[0]["k2"]["ratios"]) == {"ls", "soup", "modpo"} and runs[0]["lightgbm"]["ndcg"] > 0
    # --reuse: the fronts trained once, only the variant trains
    stamp = (tmp_path / "r" / "k2-0-0" / "compare.json").stat().st_mtime_ns
    bench(
        "real_mslr.py",
        *("--data", MSLR_SAMPLE, "--out", tmp_path / "r", "--reuse"),
        *("--variant", "alpha=1", "--variant", "min_steps=6"),
        cwd=tmp_path,
    )
    again = json.loads((tmp_path / "r" / "results.json").read_text())["runs"][0]["k2"]
    assert (tmp_path / "r" / "k2-0-0" / "compare.json").stat().st_mtime_ns == stamp
    assert again["methods"] == runs[0]["k2"]["methods"] and again["variants"][0]["settings"] == {"alpha": 1.0}
    # a variant at the compared steps, and one with a step floor of its own (one step an epoch here)
    assert again["variants"][0]["train_steps"] == again["methods"]["wcos"]["train_steps"] < 6
    assert again["variants"][1]["train_steps"] == 6
    # --reuse adds a baseline a comparison lacks: the same front as trained beside the others
    bench("real_mslr.py", "--data", MSLR_SAMPLE, "--out", tmp_path / "s", "--methods", "wcos,ls", cwd=tmp_path)
    bench("real_mslr.py", "--data", MSLR_SAMPLE, "--out", tmp_path / "s", "--reuse", cwd=tmp_path)
    added = json.loads((tmp_path / "s" / "results.json").read_text())["runs"][0]["k2"]["methods"]
    assert (tmp_path / "s" / "k2-0-0" / "added" / "compare.json").is_file()
    for m in ("wcos", "ls", "soup", "modpo"):
        assert added[m]["hypervolume"] == runs[0]["k2"]["methods"][m]["hypervolume"], m
