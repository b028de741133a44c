"""Hyper Prompt Tuning (docs/method.md section 6): a prefix conditioned on w, around a LoRA model.

A real vector w cannot be tokenised, and PEFT's prompt tuners take no
extra input and do not combine with LoRA, so the prefix is our own small
module: two MLPs map w to A (n x r) and B (r x d); the mask M = A B scales a
trainable prefix P (n x d) entrywise, and P * M is prepended to the token
embeddings. The attention mask gains n ones; the prefix positions are
dropped from the logits, so callers see logits aligned with their tokens.

The reference model of DPO is the same network with the LoRA adapters
disabled and no prefix (``reference_logits``), so no second copy of the
base is held in memory.
"""

from __future__ import annotations

import functools
import json
import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..atomic import atomic_file, check_format, write_json
from ..data.tokenize import CHOSEN, PROMPT, REJECTED
from ..simplex import dirichlet_standardiser
from .lora_mix import LoRAMix

HPT_WEIGHTS, HPT_CONFIG = "hpt.safetensors", "hpt_config.json"
HPT_FORMAT = {"format": "cosdpo-hyper-prompt", "version": 1}
MASKS = ("linear", "tanh")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}  # the matmuls' dtype under autocast (None: float32, no autocast)
PRECISION_CHOICES = ("fp32", "bf16", "auto")  # auto: bf16 where the hardware does it fast, else fp32
ATTENTIONS = ("auto", "sdpa", "eager")  # auto: as the model was loaded


@functools.cache
def fast_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AMX or AVX-512 BF16): elsewhere torch emulates
    them, many times slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on a GPU or CPU that is fast at it, else ``fp32``; other names stay."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and fast_bf16_cpu() else "fp32"


def check_compute(precision: str | None, attention: str | None):
    """A bad --precision or --attention stops before any model loads (None: left as it is)."""
    if precision is not None and precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}; got {precision!r}")
    if attention is not None and attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count attended tokens only, so left padding (generation) and
    right padding (training) put the prefix and the tokens at the same positions."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


@dataclass
class HPTConfig:
    n_objectives: int
    width: int  # the language model's embedding width d
    n_tokens: int = 8  # virtual tokens n
    rank: int = 4  # r
    hidden: int = 64
    conditioned: bool = True  # False: plain prompt tuning, one prefix for every w (the baselines' prompt)
    alpha: float = 0.3  # the Dirichlet concentration of training's w: w enters the MLPs standardised under it
    mask: str = "linear"  # "linear": M = A B (the paper); "tanh": M = 1 + tanh(A B - 1), kept within (0, 2)
    lora_mix: bool = False  # the LoRA is w-mixed too: its k-th rank block scaled by w_k (models/lora_mix.py)

    def __post_init__(self):
        if min(self.n_objectives, self.width, self.n_tokens, self.rank, self.hidden) < 1:
            raise ValueError(f"every HPT size must be >= 1, got {asdict(self)}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.mask not in MASKS:
            raise ValueError(f"mask must be one of {MASKS}, got {self.mask!r}")


class HyperPrompt(nn.Module):
    """w (B, K) -> prefix embeddings (B, n, d)."""

    def __init__(self, cfg: HPTConfig, init_prefix: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        n, r, d, h = cfg.n_tokens, cfg.rank, cfg.width, cfg.hidden
        self.prefix = nn.Parameter(init_prefix.clone() if init_prefix is not None else torch.randn(n, d) * 0.02)
        if not cfg.conditioned:
            return
        # raw w barely moves the MLPs' hidden units, so the corners got nearly the
        # same prefix (docs/results/llm-demo.md); standardised, they do not
        self.w_center, self.w_scale = dirichlet_standardiser(cfg.n_objectives, cfg.alpha)
        self.mlp_a = nn.Sequential(nn.Linear(cfg.n_objectives, h), nn.GELU(), nn.Linear(h, n * r))
        self.mlp_b = nn.Sequential(nn.Linear(cfg.n_objectives, h), nn.GELU(), nn.Linear(h, r * d))
        # start with M = A B = 1 everywhere (the prefix as initialised, for every w);
        # small output weights let w move it from there
        for mlp in (self.mlp_a, self.mlp_b):
            nn.init.normal_(mlp[-1].weight, std=1e-3)
            nn.init.constant_(mlp[-1].bias, 1.0 / math.sqrt(r))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        B = w.shape[0]
        n, r, d = self.cfg.n_tokens, self.cfg.rank, self.cfg.width
        if not self.cfg.conditioned:
            return self.prefix.expand(B, n, d)
        w = (w - self.w_center) * self.w_scale
        mask = self.mlp_a(w).view(B, n, r) @ self.mlp_b(w).view(B, r, d)
        if self.cfg.mask == "tanh":
            # the same as M = A B near the start (M = 1, slope 1), but bounded: an unbounded M let
            # the corners' prefixes grow to 8-15x a token embedding's norm, and at one corner drag
            # every response's log-prob down by 6.8 nats a token, winning "shorter is better"
            # pairs by length alone (docs/results/hh-rlhf.md)
            mask = 1 + torch.tanh(mask - 1)
        return self.prefix * mask


class HPTModel(nn.Module):
    """A causal LM (usually a PEFT LoRA model) with a w-conditioned prefix."""

    def __init__(self, model, cfg: HPTConfig, init_prefix: torch.Tensor | None = None):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.hpt = HyperPrompt(cfg, init_prefix)
        self.requested_precision = "fp32"
        self.lora_mix = LoRAMix(model, cfg.n_objectives) if cfg.lora_mix else None

    def set_compute(self, precision: str = "fp32", attention: str = "auto") -> HPTModel:
        """How forwards run; a runtime choice, not part of the saved prompt.

        ``precision="bf16"`` runs every forward (policy, reference, generation)
        under autocast: matmuls in bfloat16, the frozen base and the trained
        weights kept in float32, log-probs summed in float32 (``sequence_logprobs``).
        Why: bf16 matmuls are what GPUs and recent CPUs (AMX) are fast at; a
        training step of SmolLM2 on a CPU with AMX took half the time
        (docs/results/speed.md). ``attention`` switches the base's attention
        kernel: on CPU, the fused SDPA kernel's bf16 backward is slower than
        plain matmuls ("eager") at these lengths. ``precision="auto"`` picks bf16
        where the device computes it natively (``resolve_precision``): on a CPU
        without AMX or AVX-512 BF16, torch emulates bf16 far slower than float32.
        """
        check_compute(precision, attention)
        if attention not in (None, "auto"):
            self._transformer.set_attn_implementation(attention)
        self.requested_precision = precision
        return self

    @property
    def precision(self) -> str:
        """``fp32`` or ``bf16``: the requested precision, ``auto`` resolved for the device the policy is on now."""
        return resolve_precision(self.requested_precision, next(self.parameters()).device)

    @property
    def _transformer(self):
        """The transformers model under the PEFT wrapper (or the model itself, without LoRA)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    @property
    def attention(self) -> str:
        """The base's attention kernel now in use (what ``set_compute`` set, or the model's default)."""
        return self._transformer.config._attn_implementation

    def autocast(self, device: torch.device):
        """The context every forward of this policy runs in (see ``set_compute``)."""
        dtype = PRECISIONS[self.precision]
        return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)

    def lora_weights(self, rows: torch.Tensor):
        """The context in which a w-mixed LoRA uses ``rows`` (B, K) as each batch row's w (else nothing)."""
        return nullcontext() if self.lora_mix is None else self.lora_mix.weights(rows)

    @classmethod
    def wrap(
        cls,
        model,
        n_objectives: int,
        n_tokens: int = 8,
        rank: int = 4,
        hidden: int = 64,
        seed: int = 0,
        conditioned: bool = True,
        alpha: float = 0.3,
        mask: str = "linear",
        lora_mix: bool = False,
    ):
        """Wrap ``model``; the prefix starts as the embeddings of ``n_tokens`` random vocabulary tokens."""
        emb = model.get_input_embeddings().weight
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, emb.shape[0], (n_tokens,), generator=g)
        cfg = HPTConfig(n_objectives, emb.shape[1], n_tokens, rank, hidden, conditioned, alpha, mask, lora_mix)
        return cls(model, cfg, emb[ids].detach().float())

    def _prefixed(self, input_ids, w):
        """(embeddings with the prefix, w per row)."""
        w = torch.as_tensor(w, dtype=torch.float32, device=input_ids.device)
        w = w.expand(input_ids.shape[0], -1) if w.dim() == 1 else w
        if w.shape[-1] != self.cfg.n_objectives:
            raise ValueError(f"w has {w.shape[-1]} entries; the prefix was built for {self.cfg.n_objectives}")
        embeds = self.model.get_input_embeddings()(input_ids)
        return torch.cat([self.hpt(w).to(embeds.dtype), embeds], dim=1), w

    def _inputs(self, input_ids, attention_mask, w):
        """(embeddings with the prefix, extended mask, w per row)."""
        embeds, w = self._prefixed(input_ids, w)
        ones = torch.ones(
            input_ids.shape[0], self.cfg.n_tokens, dtype=attention_mask.dtype, device=attention_mask.device
        )
        return embeds, torch.cat([ones, attention_mask], dim=1), w

    def forward(self, input_ids, attention_mask, w, keep: int = 0, packed: dict | None = None):
        """Logits (B, T, V) for the tokens, under trade-off ``w``; ``keep`` > 0: for the last ``keep``
        positions only (the model's own ``logits_to_keep``; see ``losses.response_window``).

        ``packed``: the rows are pairs packed by ``data.tokenize.pack_pairs`` (its ``position_ids`` and
        ``segment``; ``attention_mask`` is then None), each row under its own w when ``w`` is (B, K).
        """
        if not 0 <= keep <= input_ids.shape[1]:
            raise ValueError(f"keep must be within 0..{input_ids.shape[1]}, got {keep}")
        if packed is None:
            embeds, mask, rows = self._inputs(input_ids, attention_mask, w)
            pos = positions(mask)
        else:
            embeds, rows = self._prefixed(input_ids, w)
            n, B = self.cfg.n_tokens, input_ids.shape[0]
            segment = torch.cat([packed["segment"].new_full((B, n), PROMPT), packed["segment"]], dim=1)
            mask = self._packed_mask(segment)
            ahead = torch.arange(n, device=input_ids.device).expand(B, n)
            pos = torch.cat([ahead, packed["position_ids"] + n], dim=1)
        with self.autocast(input_ids.device), self.lora_weights(rows):
            logits = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
        return logits if keep else logits[:, self.cfg.n_tokens :]

    def reference_logits(self, input_ids, attention_mask, keep: int = 0, packed: dict | None = None):
        """The base model's logits: adapters off, no prefix (``keep`` and ``packed`` as in ``forward``)."""
        off = self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else nullcontext()
        pos = None
        if packed is not None:
            attention_mask, pos = self._packed_mask(packed["segment"]), packed["position_ids"]
        with torch.no_grad(), off, self.autocast(input_ids.device):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, logits_to_keep=keep
            ).logits

    def _packed_mask(self, segment: torch.Tensor) -> torch.Tensor:
        """The (B, 1, T, T) attention of packed pair rows: causal, blind to padding, and the rejected
        response blind to the chosen one. sdpa takes it as booleans, eager as an additive float mask."""
        T = segment.shape[1]
        allowed = torch.ones(T, T, dtype=torch.bool, device=segment.device).tril() & (segment != 0)[:, None, :]
        allowed &= ~((segment == REJECTED)[:, :, None] & (segment == CHOSEN)[:, None, :])
        allowed |= torch.eye(T, dtype=torch.bool, device=segment.device)  # a padding query keeps a key: no NaN
        if self.attention == "sdpa":
            return allowed[:, None]
        if self.attention != "eager":
            raise ValueError(f"packed pairs need the sdpa or eager attention kernel, not {self.attention!r}")
        return torch.zeros(allowed.shape, device=segment.device).masked_fill(~allowed, torch.finfo(torch.float32).min)[
            :, None
        ]

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, w, **kwargs):
        """New tokens only (B, <= max_new_tokens), generated under ``w``."""
        embeds, mask, rows = self._inputs(input_ids, attention_mask, w)
        with self.autocast(input_ids.device), self.lora_weights(rows):
            return self.model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)

    def save_pretrained(self, out_dir):
        """The adapter (PEFT's own safetensors) plus hpt.safetensors and hpt_config.json."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if hasattr(self.model, "peft_config"):
            self.model.save_pretrained(str(out_dir))
        with atomic_file(out_dir / HPT_WEIGHTS) as f:
            f.write(safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in self.hpt.state_dict().items()}))
        write_json(out_dir / HPT_CONFIG, HPT_FORMAT | asdict(self.cfg))

    @classmethod
    def from_pretrained(cls, model, out_dir):
        """Rebuild around ``model`` (the base, or a PEFT model already holding the adapter)."""
        out_dir = Path(out_dir)
        if not (out_dir / HPT_CONFIG).is_file():
            raise FileNotFoundError(f"{out_dir} holds no {HPT_CONFIG}")
        if (out_dir / "adapter_config.json").is_file() and not (out_dir / "adapter_model.safetensors").is_file():
            raise ValueError(f"{out_dir} holds no adapter_model.safetensors (pickled adapter weights are refused)")
        if (out_dir / "adapter_config.json").is_file() and not hasattr(model, "peft_config"):
            from peft import PeftModel

            from .llm import peft_wrapping

            with peft_wrapping():
                model = PeftModel.from_pretrained(model, str(out_dir))
        saved = json.loads((out_dir / HPT_CONFIG).read_text())
        check_format(saved, HPT_FORMAT, out_dir / HPT_CONFIG)
        saved = {k: v for k, v in saved.items() if k not in HPT_FORMAT}
        wrapped = cls(model, HPTConfig(**saved))
        wrapped.hpt.load_state_dict(load_file(str(out_dir / HPT_WEIGHTS)))
        return wrapped
