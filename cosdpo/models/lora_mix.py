"""A LoRA conditioned on w (ours): Delta W(w) = sum_k w_k B_k A_k, per batch row.

docs/method.md section 6 conditions an LLM on w through the Hyper Prompt alone and
trains one LoRA shared by every w. When the objectives come as separate
datasets whose prompts differ (HH-RLHF's helpful and harmless files), that
shared LoRA learns what both ask alike for every w, and what they ask in
opposite directions (longer answers for one, shorter for the other) cancels
in it; the prefix, a few virtual tokens, is left to carry the whole
trade-off, and in one CPU pass it carries little (docs/results/hh-rlhf.md). Here
the LoRA itself sees w: one PEFT adapter of rank K * r whose k-th block of r
ranks is scaled by w_k, so its update is the w-mix of K rank-r updates, the
DPO Soup's parametrisation, trained in one shot with w drawn per step or per
pair. At a corner e_k it is one rank-r LoRA; the reference (adapters off)
and every PEFT feature (saving, loading, merging at a fixed w) stay PEFT's.

The weights act through a forward hook on each adapter's ``lora_A``, which
multiplies that projection's output, row by row, by w expanded over the
blocks; the caller (``HPTModel``) sets the rows for each forward.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class LoRAMix:
    """Scales the rank blocks of every LoRA ``lora_A`` projection of ``model`` by the rows' w."""

    def __init__(self, model, n_objectives: int):
        from peft.tuners.lora import LoraLayer

        self.K, self.rows, self.handles = n_objectives, None, []
        for module in model.modules():
            if isinstance(module, LoraLayer):
                for name, proj in module.lora_A.items():
                    if proj.out_features % n_objectives:
                        raise ValueError(
                            f"a w-mixed LoRA needs a rank divisible by {n_objectives} objectives; "
                            f"adapter {name!r} has rank {proj.out_features}"
                        )
                    self.handles.append(proj.register_forward_hook(self._scale))
        if not self.handles:
            raise ValueError("a w-mixed LoRA needs LoRA adapters (lora_rank >= 1)")

    def _scale(self, module, inputs, out):
        if self.rows is None:
            raise RuntimeError("the w-mixed LoRA ran without w: call it through HPTModel")
        if self.rows.shape[0] != out.shape[0]:
            raise RuntimeError(f"w has {self.rows.shape[0]} rows for a batch of {out.shape[0]}")
        scale = self.rows.repeat_interleave(out.shape[-1] // self.K, dim=-1).to(out.dtype)
        return out * scale.view(scale.shape[0], *[1] * (out.dim() - 2), scale.shape[-1])

    @contextmanager
    def weights(self, rows: torch.Tensor):
        """Every forward inside uses row i's w = ``rows[i]`` (B, K); all zeros: the base model."""
        previous, self.rows = self.rows, rows
        try:
            yield
        finally:
            self.rows = previous
