"""A policy for the Hugging Face ecosystem: its model card, and a plain PEFT LoRA at one fixed w.

At a fixed w the conditioned policy is an ordinary LoRA plus a fixed prefix:
a w-mixed LoRA scales its k-th block of r ranks by w_k after ``lora_A``
(models/lora_mix.py), which is the same as scaling the rows of ``lora_A``'s
weight, so folding w in leaves a LoRA that PEFT loads with no cosdpo code;
the Hyper Prompt at w is one (n_tokens, d) tensor, saved beside it, that a
caller puts before the prompt's embeddings.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..atomic import atomic_dir, write_json
from ..simplex import check_simplex

PREFIX_FILE = "prefix.safetensors"
HUB_IDS = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # our short names, as the Hub knows them


def model_card(info: dict, front: dict | None = None, exported_at=None) -> str:
    """README.md for a policy folder (or its export at ``exported_at``), in the Hub's model-card form."""
    objectives = info["objectives"]
    K = len(objectives)
    hub_id = HUB_IDS.get(info["base_model"], info["base_model"])
    cfg = info.get("config", {})
    example = ",".join(["0.5"] * 2) if K == 2 else ",".join([f"{1 / K:.3g}"] * K)
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {hub_id}",
        "tags: [cosdpo, dpo, multi-objective, lora]",
        "---",
        "",
        "# A cosdpo policy" + (f" at w = {','.join(f'{x:g}' for x in exported_at)}" if exported_at else ""),
        "",
        f"Fine-tuned from `{hub_id}` with COS-DPO ({info.get('method', 'wcos')}) on "
        f"{K} objectives: {', '.join(f'`{o}`' for o in objectives)}; DPO temperature beta = {info['beta']}; "
        f"data `{info.get('data')}`; prompt template `{cfg.get('prompt_template', 'chat')}`.",
        "",
    ]
    if exported_at is None:
        lines += [
            "One model serves every trade-off: choose the weights w (one per objective, summing to 1) per request.",
            "",
            "```bash",
            f'cosdpo llm generate --model THIS_FOLDER --weights {example} "Your question"',
            'cosdpo serve THIS_FOLDER          # POST /v1/generate, /v1/chat/completions with "weights"',
            "```",
            "",
            "```python",
            "from cosdpo import generate, load_policy",
            "",
            'policy, tokenizer, info = load_policy("THIS_FOLDER")',
            f'generate(policy, tokenizer, ["Your question"], [{example}], beta=info["beta"])',
            "```",
        ]
    else:
        lines += [
            f"A plain PEFT LoRA: the trade-off w = {list(exported_at)} folded in. `{PREFIX_FILE}` holds the "
            "prompt prefix at that w, (n_tokens, width) embeddings that go before the prompt's:",
            "",
            "```python",
            "import torch",
            "from peft import PeftModel",
            "from safetensors.torch import load_file",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{hub_id}")',
            'model = PeftModel.from_pretrained(base, "THIS_FOLDER")',
            'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")',
            f'prefix = load_file("THIS_FOLDER/{PREFIX_FILE}")["prefix"]',
            'chat = [{"role": "user", "content": "Hi"}]',
            'ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", '
            'return_dict=True)["input_ids"]',
            "embeds = torch.cat([prefix[None], model.get_input_embeddings()(ids)], dim=1)",
            "logits = model(inputs_embeds=embeds).logits[:, prefix.shape[0]:]",
            "```",
        ]
    if cfg:
        keys = ("lora_rank", "lora_mix", "prompt_tokens", "weight_sampling", "alpha", "lr", "batch_size", "max_length")
        shown = ", ".join(f"{k} {cfg[k]}" for k in keys if k in cfg)
        budget = f"{cfg['max_steps']} steps" if cfg.get("max_steps") else f"{cfg.get('epochs')} epochs"
        lines += ["", f"Training recipe: {budget}; {shown}; precision {cfg.get('precision')}."]
    lines += [
        "",
        "Every training option is in `policy.json` (`config`); `cosdpo llm finetune --config run.yaml` "
        "repeats the run from the run folder's `run.yaml`.",
    ]
    best = info.get("training", {}).get("best_val")
    if best is not None and exported_at is None:
        lines += ["", f"Validation during training: {best:.4f} (hypervolume of held-out preference accuracy)."]
    if front:
        lines += ["", f"## Measured front ({front.get('metric', 'held-out preference accuracy')})", ""]
        lines += ["| w | " + " | ".join(objectives) + " |", "|---|" + "---|" * K]
        for w, p in zip(front["weights"], front["points"]):
            lines.append(f"| {', '.join(f'{x:.2f}' for x in w)} | " + " | ".join(f"{x:.3f}" for x in p) + " |")
        lines += ["", f"Hypervolume {front['hypervolume']:.4f}."]
    return "\n".join(lines) + "\n"


def export_lora(policy, tokenizer, info: dict, w, out) -> Path:
    """``out``: PEFT's adapter with w folded into it, ``prefix.safetensors``, the tokenizer, a model card."""
    K = len(info["objectives"])
    w = torch.as_tensor(check_simplex(w, K), dtype=torch.float32)
    lm = policy.model
    if not hasattr(lm, "peft_config"):
        raise ValueError("this policy has no LoRA (--lora-rank 0): its prefix alone is the export")
    out = Path(out)
    with atomic_dir(out) as tmp:
        lm.save_pretrained(str(tmp))
        if policy.cfg.lora_mix:  # block k of lora_A's output is scaled by w_k: scale its weight rows instead
            weights_file = tmp / "adapter_model.safetensors"
            tensors = load_file(str(weights_file))
            for name, t in tensors.items():
                if "lora_A" in name:
                    tensors[name] = (t * w.repeat_interleave(t.shape[0] // K)[:, None].to(t.dtype)).contiguous()
            save_file(tensors, str(weights_file))
        with torch.no_grad():
            prefix = policy.hpt(w[None])[0].float().contiguous()
        save_file({"prefix": prefix}, str(tmp / PREFIX_FILE))
        tokenizer.save_pretrained(str(tmp))
        write_json(tmp / "cosdpo_export.json", {"weights": w.tolist(), "objectives": info["objectives"]})
        (tmp / "README.md").write_text(model_card(info, exported_at=w.tolist()), encoding="utf-8")
    return out
