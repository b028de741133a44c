"""A short Weight-COS-DPO run of SmolLM2-135M-Instruct on the HH-RLHF sample, and its front.

    python benchmarks/hh_front.py --out runs/hh [--steps 160] [--batch-size 4] [--grid 5] [--max-length 160]
                                  [--held-out 0.1] [--seed 0] [--alpha 0.3] [--prompt-mask linear|tanh]
                                  [--checkpoint-every N] [--resume]

The 160-token fronts in docs/hh-rlhf.md (30% of the prompts held out, one
pass): --steps 260 --pairs 0 --lr 5e-4 --prompt-lr 5e-3 --held-out 0.3
--front-pairs 1000 --no-truncate-prompt, with several seeds and with two
passes; without --no-truncate-prompt long dialogues keep their last turns,
which doubles the pairs (--steps 542 is one pass). The first front that
follows w at every step (docs/hh-rlhf.md, "The LoRA conditioned on w"):
--steps 542 --pairs 0 --lr 5e-4 --prompt-lr 5e-3 --held-out 0.3
--front-pairs 1000 --alpha 0.3 --prompt-mask tanh --weight-sampling pair
--lora-mix --precision bf16 --attention eager.

Helpful and harmless are the two objectives (../shared/data/hh-rlhf). The
run fine-tunes LoRA + Hyper Prompt Tuning for --steps steps, then measures
held-out preference accuracy, mean implicit-reward margin and log-prob shift
per response token at each grid weight, prints every grid step where raising
an objective's weight lowers its accuracy (``order_breaks``), and writes front.json / front.png
(what ``cosdpo llm front`` writes), with each w's length-balanced accuracy
added to front.json (the mean of the accuracies on pairs whose chosen answer
is longer and on those where it is shorter: 0.5 for any rule on length).
CPU sized: batch 4 (--batch-size), pairs of at most --max-length tokens (160 with
--held-out 0.3 keeps 1072 helpful and 1093 harmless training pairs, 476
and 465 held out; 493, 568, 201 and 238 with --no-truncate-prompt), one
pass over --pairs pairs per objective. A long CPU run checkpoints every
--checkpoint-every steps and continues with --resume (same flags).
``--fixed-weights 1,0`` (or ``0,1``) trains one model on one objective
instead (DPO with a plain prompt, the corner baseline): how far each
objective is learnable alone, and how much it costs the other, at this
size. ``--summarize runs/*/front.json`` prints the mean front over runs that
differ only in --seed, and each run's slope of accuracy on its own weight;
with ``--plot FILE`` it also draws every run's front and the mean front.
"""

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from cosdpo.atomic import write_json
from cosdpo.evaluation.metrics import hypervolume
from cosdpo.evaluation.plot import plot_fronts
from cosdpo.models.hpt import ATTENTIONS, MASKS, PRECISIONS
from cosdpo.models.llm import resolve_model
from cosdpo.training.llm import WEIGHT_SAMPLING, LLMConfig, finetune_llm, load_split, write_front
from cosdpo.training.loop import LR_SCHEDULES

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf"


def length_gaps(data: str, cfg: LLMConfig) -> tuple[np.ndarray, np.ndarray, list]:
    """Per held-out pair (the front's pairs, in its order): chosen minus rejected response tokens,
    and the pair's objective index."""
    from transformers import AutoTokenizer

    test, objectives, _ = load_split(data, AutoTokenizer.from_pretrained(resolve_model(cfg.model)), cfg,
                                     split="held-out")
    n = np.array([len(response) for _, response in test.sequences])
    return n[test.chosen] - n[test.rejected], test.objective, objectives


def longer_wins(gap: np.ndarray, objective: np.ndarray, objectives: list) -> dict:
    """Held-out accuracy per objective of "the longer response wins" (ties a half).

    What response length alone gives on the front's pairs: DPO sums
    log-probs over response tokens, so length is the first thing a short run
    can learn, and a front should be read against it.
    """
    return {o: float(np.mean((gap[objective == k] > 0) + 0.5 * (gap[objective == k] == 0)))
            for k, o in enumerate(objectives)}


def length_split(front: dict, gap: np.ndarray) -> dict:
    """Per objective k and per corner: accuracy on the pairs whose chosen response is longer, and
    on those whose chosen response is shorter.

    A corner that only learned "shorter wins" scores near 0 on the first and
    near 1 on the second; one that learned the objective is above 0.5 on both.
    """
    m, obj, w = np.asarray(front["pair_margins"]), np.asarray(front["pair_objective"]), np.asarray(front["weights"])
    out = {}
    for k, o in enumerate(front["objectives"]):
        longer, shorter = (obj == k) & (gap > 0), (obj == k) & (gap < 0)
        out[o] = {corner: (float(np.mean(m[i][longer] > 0)), float(np.mean(m[i][shorter] > 0)))
                  for corner, i in (("own", np.argmax(w[:, k])), ("other", np.argmin(w[:, k])))}
        out[o]["pairs"] = (int(longer.sum()), int(shorter.sum()))
    return out


def length_balanced(front: dict, gap: np.ndarray) -> np.ndarray:
    """Per w and objective, the mean of the accuracies on chosen-longer and on chosen-shorter pairs.

    Any rule on length alone ("shorter wins", "longer wins") scores 0.5 here
    whatever the mix of pairs, so what rises above 0.5 was learned beyond
    length; plain accuracy rewards a length rule by as much as the held-out
    pairs lean one way.
    """
    m, obj = np.asarray(front["pair_margins"]), np.asarray(front["pair_objective"])
    out = np.empty((len(m), len(front["objectives"])))
    for k in range(out.shape[1]):
        longer, shorter = (obj == k) & (gap > 0), (obj == k) & (gap < 0)
        out[:, k] = 0.5 * ((m[:, longer] > 0).mean(1) + (m[:, shorter] > 0).mean(1))
    return out


def discordant(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """Pairs right (margin > 0) under ``a`` only, under ``b`` only, and the sign-test p on those two counts
    (1 when no pair differs): two points of a front compared on the same held-out pairs."""
    from scipy import stats

    n_a, n_b = int(((a > 0) & (b <= 0)).sum()), int(((b > 0) & (a <= 0)).sum())
    return n_a, n_b, stats.binomtest(n_a, n_a + n_b).pvalue if n_a + n_b else 1.0


def corner_test(front: dict) -> dict:
    """Per objective k, its corner against the other corner on the same held-out pairs.

    (pairs only k's corner gets right, pairs only the other corner gets right,
    sign-test p on those, Wilcoxon p on the margins): w's effect against the
    noise of a small held-out set, which the accuracies alone do not show.
    """
    from scipy import stats

    m, obj, w = np.asarray(front["pair_margins"]), np.asarray(front["pair_objective"]), np.asarray(front["weights"])
    out = {}
    for k, o in enumerate(front["objectives"]):
        own, other = m[np.argmax(w[:, k])][obj == k], m[np.argmin(w[:, k])][obj == k]
        n_own, n_other, sign_p = discordant(own, other)
        # a model that ignores w (--fixed-weights) has equal corners: nothing to test, p = 1
        wilcoxon_p = stats.wilcoxon(own, other).pvalue if np.any(own != other) else 1.0
        out[o] = (n_own, n_other, sign_p, wilcoxon_p)
    return out


def order_breaks(front: dict) -> dict[str, list[tuple]]:
    """Per objective k, the grid steps where raising w_k lowers k's held-out accuracy.

    What issue 5 asks of the front, step by step: each break is (w_k before,
    w_k after, accuracy change) and, where front.json keeps every pair's
    margin, the pairs that step turns wrong and right and their sign-test p,
    so a break of a pair or two reads as the noise it is. Ties are not breaks.
    """
    w, points = np.asarray(front["weights"], dtype=float), np.asarray(front["points"], dtype=float)
    m = np.asarray(front["pair_margins"]) if "pair_margins" in front else None
    out = {}
    for k, o in enumerate(front["objectives"]):
        order = np.argsort(w[:, k], kind="stable")
        own = np.asarray(front.get("pair_objective", [])) == k
        breaks = []
        for i, j in zip(order[:-1], order[1:]):
            drop = points[j, k] - points[i, k]
            if w[j, k] > w[i, k] and drop < 0:
                b = (float(w[i, k]), float(w[j, k]), float(drop))
                if m is not None:
                    b += discordant(m[i][own], m[j][own])  # (turned wrong, turned right, p)
                breaks.append(b)
        out[o] = breaks
    return out


def print_order_breaks(front: dict, label: str = "") -> None:
    for o, breaks in order_breaks(front).items():
        if not breaks:
            print(f"{label}{o}: accuracy never falls as its weight rises")
        for b in breaks:
            pairs = f" ({b[3]} pairs turn wrong, {b[4]} right: sign test p = {b[5]:.2g})" if len(b) > 3 else ""
            print(f"{label}{o}: raising its weight from {b[0]:.2f} to {b[1]:.2f} lowers accuracy by {-b[2]:.3f}{pairs}")


def seed_summary(fronts: list[dict]) -> dict:
    """Mean and spread over fronts of runs that differ only in seed, and each run's trend.

    One short run's front is noisy step by step (docs/hh-rlhf.md: no seed was
    monotone at every step), so whether raising w_k raises objective k is read
    from the mean over seeds and from each run's least-squares slope of its
    accuracy (and margin) on its own weight.
    """
    first = fronts[0]
    for i, f in enumerate(fronts[1:], 2):
        if f["objectives"] != first["objectives"] or not np.allclose(f["weights"], first["weights"]):
            raise ValueError(f"front {i} is over other objectives or weights than front 1: "
                             "fronts over different objectives or weights cannot be summarised together")
    w = np.asarray(first["weights"], dtype=float)
    points = np.array([f["points"] for f in fronts], dtype=float)
    margins = np.array([f["margins"] for f in fronts], dtype=float)

    def slopes(values):  # runs x objectives
        return np.array([[np.polyfit(w[:, k], v[:, k], 1)[0] for k in range(w.shape[1])] for v in values])

    return {"objectives": first["objectives"], "weights": w.tolist(), "runs": len(fronts),
            "mean": points.mean(0).tolist(), "std": points.std(0, ddof=1).tolist() if len(fronts) > 1 else None,
            "mean_margins": margins.mean(0).tolist(), "slopes": slopes(points).tolist(),
            "margin_slopes": slopes(margins).tolist(),
            "mean_length_balanced": (np.mean([f["length_balanced"] for f in fronts], 0).tolist()
                                     if all("length_balanced" in f for f in fronts) else None)}


def read_front(path: str) -> dict:
    """A front.json, or a one-line error naming the file (not a KeyError from deep inside)."""
    try:
        front = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: cannot read a front.json ({e})")
    missing = [k for k in ("objectives", "weights", "points", "margins") if k not in front]
    if missing:
        raise SystemExit(f"{path}: not a front.json (no {', '.join(missing)})")
    return front


def mean_front(fronts: list[dict], labels: list[str], summary: dict) -> dict[str, dict]:
    """The runs' fronts and their mean front (name -> front dict), for ``plot_fronts``.

    ``summary`` is ``seed_summary(fronts)``. The mean's hypervolume is taken
    at the first run's reference point: a mean front is only compared with
    fronts of the same runs.
    """
    ref = fronts[0].get("reference_point")
    mean = {"objectives": summary["objectives"], "weights": summary["weights"], "points": summary["mean"],
            "metric": fronts[0].get("metric", "accuracy"), "hypervolume": hypervolume(summary["mean"], ref)}
    runs = {label: f if "hypervolume" in f else {**f, "hypervolume": hypervolume(f["points"], f.get("reference_point"))}
            for label, f in zip(labels, fronts)}
    return {**runs, f"mean of {len(fronts)}": mean}


def print_seed_summary(paths: list[str], plot: str | None = None) -> None:
    try:
        fronts = [read_front(p) for p in paths]
        s = seed_summary(fronts)
    except ValueError as e:
        raise SystemExit(f"{e} ({', '.join(paths)})")
    if plot:
        labels = [Path(p).parent.name or p for p in paths]
        plot_fronts(mean_front(fronts, labels, s), plot, title=f"{len(paths)} runs and their mean front")
        print(f"wrote {plot}")
    print(f"{s['runs']} runs; mean{' (std)' if s['std'] else ''} held-out accuracy and mean margin per objective "
          f"({', '.join(s['objectives'])})")
    std = s["std"] or [[None] * len(s["objectives"])] * len(s["weights"])
    for w, p, d, m in zip(s["weights"], s["mean"], std, s["mean_margins"]):
        cells = [f"{p[k]:.3f}" + (f" ({d[k]:.3f})" if d[k] is not None else "") + f" {m[k]:+.4f}"
                 for k in range(len(p))]
        print(f"w={','.join(f'{x:.2f}' for x in w)}  " + "  ".join(cells))
    if s["mean_length_balanced"]:
        print("mean length-balanced accuracy (a rule on length alone scores 0.5): " + "; ".join(
            f"w={','.join(f'{x:.2f}' for x in w)} " + " ".join(f"{v:.3f}" for v in b)
            for w, b in zip(s["weights"], s["mean_length_balanced"])))
    for path, front in zip(paths, fronts):
        print_order_breaks(front, f"{Path(path).parent.name or path}: ")
    for name, key in (("accuracy", "slopes"), ("margin", "margin_slopes")):
        print(f"slope of each objective's {name} on its own weight, per run: " + "; ".join(
            f"{o} " + " ".join(f"{row[k]:+.3f}" for row in s[key]) for k, o in enumerate(s["objectives"])))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/hh")
    ap.add_argument("--steps", type=int, default=160)
    ap.add_argument("--grid", type=int, default=5)
    ap.add_argument("--lr", type=float, default=5e-4, help="2e-3 diverged (docs/hh-rlhf.md)")
    ap.add_argument("--prompt-lr", type=float, default=0.0, help="lr of the Hyper Prompt; 0 = --lr")
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per step (one w per step)")
    ap.add_argument("--pairs", type=int, default=320)
    ap.add_argument("--val-pairs", type=int, default=16, help="held-out pairs per objective for the end-of-run check")
    ap.add_argument("--front-pairs", type=int, default=100, help="held-out pairs per objective for the front")
    ap.add_argument("--max-length", type=int, default=160)
    ap.add_argument("--no-truncate-prompt", dest="truncate_prompt", action="store_false",
                    help="leave out pairs over --max-length instead of cutting their prompt to its last turns "
                         "(how the docs/hh-rlhf.md fronts before 'Twice the pairs' were made)")
    ap.add_argument("--held-out", type=float, default=0.1, help="fraction of prompts kept out of training for the front")
    ap.add_argument("--lr-schedule", default="constant", choices=LR_SCHEDULES)
    ap.add_argument("--warmup", type=int, default=0, help="steps of linear lr warmup")
    ap.add_argument("--alpha", type=float, default=LLMConfig.alpha,
                    help="Dirichlet concentration of the w drawn per step (small: near the corners, a wider front)")
    ap.add_argument("--penalty", type=float, default=LLMConfig.penalty, help="lambda of the cosine penalty")
    ap.add_argument("--weight-sampling", default=LLMConfig.weight_sampling, choices=WEIGHT_SAMPLING,
                    help="step: one w per step (the paper); pair: each pair its own w ~ Dir(alpha + e_objective)")
    ap.add_argument("--prompt-mask", default=LLMConfig.prompt_mask, choices=MASKS,
                    help="the Hyper Prompt's mask: linear (M = A B) or tanh (bounded to (0, 2))")
    ap.add_argument("--lora-rank", type=int, default=LLMConfig.lora_rank,
                    help="0: no LoRA, the Hyper Prompt alone trains (every update then depends on w)")
    ap.add_argument("--lora-mix", action="store_true",
                    help="condition the LoRA on w too: one rank-r update per objective, mixed by w (ours)")
    ap.add_argument("--precision", default=LLMConfig.precision, choices=tuple(PRECISIONS),
                    help="bf16: every forward under bf16 autocast (about half the step time on an AMX CPU)")
    ap.add_argument("--attention", default=LLMConfig.attention, choices=ATTENTIONS,
                    help="the base's attention kernel; eager is faster than sdpa in bf16 on CPU")
    ap.add_argument("--front-precision", default="fp32", choices=tuple(PRECISIONS),
                    help="precision of the front's forwards (default fp32 whatever training used: bf16 moves a "
                         "response's log-prob by up to half a nat, enough to flip near-tied pairs between weights)")
    ap.add_argument("--checkpoint-every", type=int, default=0, help="steps; 0 = at the end of each pass")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    ap.add_argument("--reference", metavar="FILE",
                    help="reference log-prob cache (training and front pairs) shared by runs on the same split, "
                         "computed where missing (default: training's in --out/policy, the front's not kept)")
    ap.add_argument("--fixed-weights", metavar="W1,W2",
                    help="train one model for this w (DPO-LS; a 0 leaves that objective's pairs out) "
                         "instead of Weight-COS-DPO: a corner run measures what one objective alone learns")
    ap.add_argument("--seed", type=int, default=0, help="initialisation, batch order and sampled w (not the split)")
    ap.add_argument("--summarize", nargs="+", metavar="FRONT_JSON",
                    help="print the mean front and per-run slopes of these runs' front.json files, train nothing")
    ap.add_argument("--plot", metavar="PNG", help="with --summarize: draw each run's front and the mean front here")
    a = ap.parse_args()
    if a.plot and not a.summarize:
        ap.error("--plot draws a --summarize; give the front.json files with --summarize")
    if a.summarize:
        print_seed_summary(a.summarize, a.plot)
        raise SystemExit
    data = f"helpful={HH / 'helpful.jsonl.gz'},harmless={HH / 'harmless.jsonl.gz'}"
    cfg = LLMConfig(max_steps=a.steps, batch_size=a.batch_size, max_length=a.max_length, truncate_prompt=a.truncate_prompt,
                    max_pairs=a.pairs, val_pairs=a.val_pairs,
                    held_out=a.held_out, lr=a.lr, prompt_lr=a.prompt_lr, lr_schedule=a.lr_schedule,
                    warmup_steps=a.warmup, alpha=a.alpha, penalty=a.penalty, prompt_mask=a.prompt_mask,
                    weight_sampling=a.weight_sampling, precision=a.precision, attention=a.attention,
                    lora_rank=a.lora_rank, lora_mix=a.lora_mix,
                    checkpoint_every=a.checkpoint_every, val_every=10**6, seed=a.seed,
                    method="fixed" if a.fixed_weights else "wcos",
                    fixed_weights=tuple(float(x) for x in a.fixed_weights.split(",")) if a.fixed_weights else None,
                    epochs=10**6)  # --steps sets the length; validating only at the end keeps the last step
                                   # rather than one picked on pairs of the held-out prompts
    t0 = time.perf_counter()
    policy, metrics = finetune_llm(data, Path(a.out) / "policy", cfg, resume=a.resume, overwrite=not a.resume,
                                   reference_file=a.reference)
    t1 = time.perf_counter()
    front = write_front(Path(a.out) / "policy", data, Path(a.out), grid=a.grid, policy=policy,
                        max_pairs=a.front_pairs, keep_pairs=True, reference_file=a.reference,
                        precision=a.front_precision)
    t2 = time.perf_counter()
    print(f"training {metrics['train_seconds']:.0f} s of {t1 - t0:.0f} s; front {t2 - t1:.0f} s")
    for w, p, m, d in zip(front["weights"], front["points"], front["margins"], front["logprob_shift"]):
        print(f"w={w[0]:.2f},{w[1]:.2f}  accuracy helpful {p[0]:.3f} harmless {p[1]:.3f}  "
              f"margin {m[0]:+.4f} {m[1]:+.4f}  log-prob shift {d:+.3f} a token")
    print(f"hypervolume {front['hypervolume']:.4f}")
    print_order_breaks(front)
    for o, (n_own, n_other, sign_p, wilcoxon_p) in corner_test(front).items():
        print(f"{o} pairs, its corner against the other: right only at its corner {n_own}, only at the other "
              f"{n_other} (sign test p = {sign_p:.2g}); margins Wilcoxon p = {wilcoxon_p:.2g}")
    gap, objective, objectives = length_gaps(data, replace(cfg, val_pairs=a.front_pairs))  # the front's pairs
    if not np.array_equal(objective, front["pair_objective"]):
        raise RuntimeError("the length analysis did not load the front's pairs in the front's order")
    print("longer response wins (held-out accuracy of length alone):",
          ", ".join(f"{o} {v:.3f}" for o, v in longer_wins(gap, objective, objectives).items()))
    front["length_balanced"] = length_balanced(front, gap).tolist()
    write_json(Path(a.out) / "front.json", front)  # for --summarize
    for w, b in zip(front["weights"], front["length_balanced"]):
        print(f"w={w[0]:.2f},{w[1]:.2f}  length-balanced accuracy helpful {b[0]:.3f} harmless {b[1]:.3f}")
    for o, r in length_split(front, gap).items():
        print(f"{o} pairs, chosen longer / shorter ({r['pairs'][0]} / {r['pairs'][1]}): accuracy at its corner "
              f"{r['own'][0]:.3f} / {r['own'][1]:.3f}, at the other corner {r['other'][0]:.3f} / {r['other'][1]:.3f}")
