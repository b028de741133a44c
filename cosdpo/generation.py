"""Controlled generation: choose the trade-off w, and the temperature beta', per request.

docs/method.md section 4: a policy trained at temperature beta serves any beta' by
rescaling its deviation from the base; at decoding time we apply it to the
next-token logits (a token-level approximation of the sequence-level
identity):

    z' = z_base + (beta / beta') * (z_theta - z_base)

When beta' differs from beta, the tuned rows (adapters on, prefix on) and the
base rows (adapters off through PEFT's mixed-adapter batches, prefix masked
out) go through ONE batched forward per token, sharing one KV cache. Positions
count attended tokens only, so the base rows see exactly what the base model
sees without a prefix.

Our own decoding loop (greedy or temperature / top-p sampling from a seeded
generator) rather than ``model.generate``: the rescaling needs both halves'
logits at each step, and one loop for both cases keeps them identical when
beta' = beta.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from .data.tokenize import prompt_ids
from .models.hpt import positions
from .simplex import check_simplex

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch


def check_beta_prime(beta_prime: float | None) -> float | None:
    if beta_prime is not None and not (beta_prime > 0 and beta_prime < float("inf")):
        raise ValueError(f"beta' (--beta-prime) must be a finite number > 0, got {beta_prime}")
    return beta_prime


def check_decoding(max_new_tokens: int, do_sample: bool, temperature: float, top_p: float):
    """Decoding options that would answer nothing, or divide by zero when sampling, stop here."""
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens}")
    if do_sample and not (0 < temperature < float("inf")):
        raise ValueError(f"the sampling temperature must be a finite number > 0, got {temperature}")
    if do_sample and not (0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def _pick(logits, do_sample: bool, temperature: float, top_p: float, generator):
    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # the smallest set whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass(frozen=True)
class Decoding:
    """One row's decoding options, when the rows of a batch each have their own (a server's requests)."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        check_decoding(self.max_new_tokens, self.do_sample, self.temperature, self.top_p)


class _RowSampler:
    """Each row greedy or sampled from its own seeded generator, so that a request's answer does not
    depend on the requests it shares a batch with."""

    def __init__(self, rows: list[Decoding], device):
        self.rows = rows
        self.generators = [torch.Generator(device=device).manual_seed(r.seed) for r in rows]
        self.limits = torch.tensor([r.max_new_tokens for r in rows], device=device)

    def __call__(self, logits):
        return torch.stack(
            [
                _pick(logits[i], r.do_sample, r.temperature, r.top_p, g)
                for i, (r, g) in enumerate(zip(self.rows, self.generators))
            ]
        )


@torch.no_grad()
def generate_ids(
    policy,
    input_ids,
    attention_mask,
    w,
    *,
    ratio=1.0,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    rows: list[Decoding] | None = None,
    on_step=None,
) -> torch.Tensor:
    """New token ids (B, <= max_new_tokens) for LEFT-padded prompts, under trade-off ``w`` ((K,) or (B, K)).

    ``ratio`` = beta / beta' (a number, or one per row); 1 serves the policy as
    trained, 0 serves the base alone. ``rows`` gives each row its own
    decoding options (then the ones above are ignored); ``on_step(tokens)`` sees
    each step's (B,) new tokens as they come (streaming).
    """
    lm, B = policy.model, input_ids.shape[0]
    device = input_ids.device
    embeds, mask, w_rows = policy._inputs(input_ids, attention_mask, w)
    ratio = torch.as_tensor(ratio, dtype=torch.float32, device=device).expand(B)
    policy_only, base_only = bool((ratio == 1).all()), bool((ratio == 0).all())
    mix = not (policy_only or base_only)
    base_mask = mask.clone()
    base_mask[:, : policy.cfg.n_tokens] = 0  # the base rows do not see the prefix
    kwargs = {}
    if mix:
        embeds, mask = torch.cat([embeds, embeds]), torch.cat([mask, base_mask])
        w_rows = torch.cat([w_rows, torch.zeros_like(w_rows)])
    elif base_only:
        mask, w_rows = base_mask, torch.zeros_like(w_rows)
    # a w-mixed LoRA adds nothing to a row whose w is 0, so its base rows need no adapter switch
    if hasattr(lm, "peft_config") and not policy_only and policy.lora_mix is None:
        kwargs["adapter_names"] = ([lm.active_adapter] * B if mix else []) + [BASE_ADAPTER] * B
    if rows is None:
        generator = torch.Generator(device=device).manual_seed(seed)
        pick, limits = (lambda z: _pick(z, do_sample, temperature, top_p, generator)), None
    else:
        pick = _RowSampler(rows, device)
        limits, max_new_tokens = pick.limits, max(r.max_new_tokens for r in rows)
    # the KV cache's name: ``cache`` in current transformers, ``past_key_values`` (now deprecated) before
    cache_name = "cache" if "cache" in inspect.signature(policy._transformer.forward).parameters else "past_key_values"
    pos = positions(mask)
    with policy.autocast(device), policy.lora_weights(w_rows):  # precision: HPTModel.set_compute
        out = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=True, **kwargs)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    new = []
    for step in range(max_new_tokens):
        z = out.logits[:, -1].float()
        if mix:
            z = z[B:] + ratio[:, None] * (z[:B] - z[B:])
        token = pick(z)
        token = torch.where(done, torch.full_like(token, pad_token_id), token)
        new.append(token)
        if on_step is not None:
            on_step(torch.where(done, -1, token))
        if eos_token_id is not None:
            done |= token == eos_token_id
        if limits is not None:
            done |= limits <= step + 1
        if bool(done.all()) or step + 1 == max_new_tokens:
            break
        token_in = torch.cat([token, token]) if mix else token
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = pos[:, -1:] + 1
        with policy.autocast(device), policy.lora_weights(w_rows):
            out = lm(
                input_ids=token_in[:, None],
                attention_mask=mask,
                position_ids=pos,
                **{cache_name: getattr(out, cache_name)},
                use_cache=True,
                **kwargs,
            )
    return torch.stack(new, dim=1) if new else input_ids.new_zeros((B, 0))


def encode_prompts(tokenizer, prompts, device="cpu"):
    """Chat-templated, LEFT-padded prompt ids; a prompt is a string or a list of chat messages."""
    rows = [prompt_ids(tokenizer, p) for p in prompts]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r) :] = torch.tensor(r)
        mask[i, T - len(r) :] = 1
    return ids.to(device), mask.to(device)


def generate(
    policy,
    tokenizer,
    prompts,
    weights,
    *,
    beta: float = 1.0,
    beta_prime: float | None = None,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    reference: bool = False,
) -> list[str]:
    """Responses to ``prompts`` under trade-off ``weights`` (and temperature beta', if given).

    ``beta`` is the temperature the policy was trained at (``policy.json``);
    ``reference=True`` answers with the base model (beta' -> infinity).
    """
    w = torch.as_tensor(check_simplex(weights, policy.cfg.n_objectives), dtype=torch.float32)
    check_decoding(max_new_tokens, do_sample, temperature, top_p)
    ratio = 0.0 if reference else 1.0 if check_beta_prime(beta_prime) is None else beta / beta_prime
    device = next(policy.parameters()).device
    texts = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = encode_prompts(tokenizer, prompts[start : start + batch_size], device)
        new = generate_ids(
            policy,
            ids,
            mask,
            w.to(device),
            ratio=ratio,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            seed=seed + start,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        texts += tokenizer.batch_decode(new, skip_special_tokens=True)
    return [t.strip() for t in texts]
