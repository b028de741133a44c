"""The HH-RLHF front of a recipe: train, measure the held-out front, and read it against length.

    python benchmarks/hh_front.py --out runs/hh [--recipe hh-rlhf-cpu] [--data HH_FOLDER] [--seed 0]
                                  [--set max_steps=100 --set lora_mix=false ...] [--front-pairs 1000]
    python benchmarks/hh_front.py --summarize runs/hh-*/front.json [--plot mean.png]
    python benchmarks/hh_front.py --quick --model TINY_FOLDER --out /tmp/hh     # checks the script runs

Trains the recipe (helpful and harmless, ``helpful.jsonl.gz`` and
``harmless.jsonl.gz`` in --data) through ``finetune_llm``, writes the
held-out front with every pair's margin (``write_front(keep_pairs=True)``),
and prints: accuracy, margin and log-prob shift per w; every grid step where
raising an objective's weight lowers its accuracy, with the pairs it turns
wrong and right; each corner against the other (sign test); what length
alone scores; and the length-balanced accuracy per w (0.5 for any rule on
length). ``--summarize`` prints the mean front of runs that differ only in
--seed, with each run's slope of accuracy on its own weight. Results:
docs/results/hh-rlhf.md.
"""

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from cosdpo.atomic import write_json
from cosdpo.config import from_dict, load_recipe
from cosdpo.evaluation.front_analysis import (
    corner_test,
    length_balanced,
    length_gaps,
    length_split,
    longer_wins,
    mean_front,
    order_breaks,
    read_front,
    seed_summary,
)
from cosdpo.evaluation.plot import plot_fronts
from cosdpo.models.llm import load_base
from cosdpo.training.llm import LLMConfig, finetune_llm, load_split, write_front

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf"


def print_order_breaks(front: dict, label: str = "") -> None:
    for o, breaks in order_breaks(front).items():
        if not breaks:
            print(f"{label}{o}: accuracy never falls as its weight rises")
        for b in breaks:
            pairs = f" ({b[3]} pairs turn wrong, {b[4]} right: sign test p = {b[5]:.2g})" if len(b) > 3 else ""
            print(f"{label}{o}: raising its weight from {b[0]:.2f} to {b[1]:.2f} lowers accuracy by {-b[2]:.3f}{pairs}")


def print_seed_summary(paths: list[str], plot: str | None = None) -> None:
    fronts = [read_front(p) for p in paths]
    s = seed_summary(fronts)
    if plot:
        labels = [Path(p).parent.name or p for p in paths]
        plot_fronts(mean_front(fronts, labels, s), plot, title=f"{len(paths)} runs and their mean front")
        print(f"wrote {plot}")
    print(
        f"{s['runs']} runs; mean{' (std)' if s['std'] else ''} held-out accuracy and mean margin per objective "
        f"({', '.join(s['objectives'])})"
    )
    std = s["std"] or [[None] * len(s["objectives"])] * len(s["weights"])
    for w, p, d, m in zip(s["weights"], s["mean"], std, s["mean_margins"]):
        cells = [
            f"{p[k]:.3f}" + (f" ({d[k]:.3f})" if d[k] is not None else "") + f" {m[k]:+.4f}" for k in range(len(p))
        ]
        print(f"w={','.join(f'{x:.2f}' for x in w)}  " + "  ".join(cells))
    if s["mean_length_balanced"]:
        print(
            "mean length-balanced accuracy (a rule on length alone scores 0.5): "
            + "; ".join(
                f"w={','.join(f'{x:.2f}' for x in w)} " + " ".join(f"{v:.3f}" for v in b)
                for w, b in zip(s["weights"], s["mean_length_balanced"])
            )
        )
    for path, front in zip(paths, fronts):
        print_order_breaks(front, f"{Path(path).parent.name or path}: ")
    for name, key in (("accuracy", "slopes"), ("margin", "margin_slopes")):
        print(
            f"slope of each objective's {name} on its own weight, per run: "
            + "; ".join(f"{o} " + " ".join(f"{row[k]:+.3f}" for row in s[key]) for k, o in enumerate(s["objectives"]))
        )


def config(a) -> LLMConfig:
    """The recipe, then --set NAME=VALUE overrides (YAML values), then --seed / --model / --quick."""
    values = load_recipe(a.recipe)
    for key in ("command", "description", "format"):
        values.pop(key, None)
    for item in a.set:
        name, _, text = item.partition("=")
        values[name] = yaml.safe_load(text)
    values |= {"seed": a.seed, "progress": not a.quick, "val_every": 10**6}  # validate once, at the end
    if a.model:
        values["model"] = a.model
    if a.quick:
        values |= {
            "max_steps": 2,
            "max_pairs": 8,
            "val_pairs": 2,
            "max_length": 96,
            "precision": "fp32",
            "attention": "auto",
            "checkpoint_every": 0,
        }
    return from_dict(LLMConfig, values, f"recipe {a.recipe} with --set")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/hh")
    ap.add_argument("--data", default=str(HH), help="folder with helpful.jsonl.gz and harmless.jsonl.gz")
    ap.add_argument("--recipe", default="hh-rlhf-cpu", help="a recipe name or config file (llm finetune)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a recipe option")
    ap.add_argument("--model", help="override the recipe's model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", type=int, default=5)
    ap.add_argument("--front-pairs", type=int, default=1000, help="held-out pairs per objective for the front")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    ap.add_argument(
        "--summarize",
        nargs="+",
        metavar="FRONT_JSON",
        help="print the mean front and per-run slopes of these runs' front.json files, train nothing",
    )
    ap.add_argument("--plot", metavar="PNG", help="with --summarize: draw each run's front and the mean front here")
    ap.add_argument("--quick", action="store_true", help="2 steps on 8 pairs per objective, a 3-point front")
    a = ap.parse_args()
    if a.plot and not a.summarize:
        ap.error("--plot draws a --summarize; give the front.json files with --summarize")
    if a.summarize:
        print_seed_summary(a.summarize, a.plot)
        return
    if a.quick:
        a.grid, a.front_pairs = 3, 4
    cfg = config(a)
    data = f"helpful={Path(a.data) / 'helpful.jsonl.gz'},harmless={Path(a.data) / 'harmless.jsonl.gz'}"
    out = Path(a.out)
    t0 = time.perf_counter()
    policy, metrics = finetune_llm(data, out / "policy", cfg, fmt="hh", resume=a.resume, overwrite=not a.resume)
    t1 = time.perf_counter()
    front = write_front(
        out / "policy",
        data,
        out,
        grid=a.grid,
        policy=policy,
        max_pairs=a.front_pairs,
        fmt="hh",
        keep_pairs=True,
        precision="fp32",
        progress=not a.quick,
    )
    t2 = time.perf_counter()
    print(f"training {metrics['train_seconds']:.0f} s of {t1 - t0:.0f} s; front {t2 - t1:.0f} s")
    for w, p, m, d in zip(front["weights"], front["points"], front["margins"], front["logprob_shift"]):
        print(
            f"w={w[0]:.2f},{w[1]:.2f}  accuracy helpful {p[0]:.3f} harmless {p[1]:.3f}  "
            f"margin {m[0]:+.4f} {m[1]:+.4f}  log-prob shift {d:+.3f} a token"
        )
    print(f"hypervolume {front['hypervolume']:.4f}")
    print_order_breaks(front)
    for o, (n_own, n_other, sign_p, wilcoxon_p) in corner_test(front).items():
        print(
            f"{o} pairs, its corner against the other: right only at its corner {n_own}, only at the other "
            f"{n_other} (sign test p = {sign_p:.2g}); margins Wilcoxon p = {wilcoxon_p:.2g}"
        )
    _, tokenizer = load_base(cfg.model, prompt_template=cfg.prompt_template)
    test, objectives, _ = load_split(data, tokenizer, replace(cfg, val_pairs=a.front_pairs), "hh", "held-out")
    if not np.array_equal(test.objective, front["pair_objective"]):
        raise RuntimeError("the length analysis did not load the front's pairs in the front's order")
    gap = length_gaps(test)
    print(
        "longer response wins (held-out accuracy of length alone):",
        ", ".join(f"{o} {v:.3f}" for o, v in longer_wins(gap, test.objective, objectives).items()),
    )
    front["length_balanced"] = length_balanced(front, gap).tolist()
    write_json(out / "front.json", front)  # for --summarize
    for w, b in zip(front["weights"], front["length_balanced"]):
        print(f"w={w[0]:.2f},{w[1]:.2f}  length-balanced accuracy helpful {b[0]:.3f} harmless {b[1]:.3f}")
    for o, r in length_split(front, gap).items():
        print(
            f"{o} pairs, chosen longer / shorter ({r['pairs'][0]} / {r['pairs'][1]}): accuracy at its corner "
            f"{r['own'][0]:.3f} / {r['own'][1]:.3f}, at the other corner {r['other'][0]:.3f} / {r['other'][1]:.3f}"
        )


if __name__ == "__main__":
    main()
