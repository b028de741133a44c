"""``cosdpo serve``'s options: a leaf module, so the command line needs no web framework to list them."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import check_choices, check_finite, option

BACKENDS = ("torch", "onnx")


@dataclass
class ServeConfig:
    """How ``cosdpo serve`` batches requests and what it refuses as too large."""

    backend: str = option(
        "torch", "Ranker forward: torch, or onnx (exported at start; ONNX Runtime).", choices=BACKENDS, panel="Serving"
    )
    batching: bool = option(True, "Gather concurrent requests into one forward.", panel="Serving")
    max_batch: int = option(64, "Most requests in one batch (rankers; LLM prompts: --max-llm-batch).", panel="Serving")
    max_llm_batch: int = option(8, "Most prompts decoded together in one LLM batch.", panel="Serving")
    max_wait_ms: float = option(
        0.0,
        "How long a batch's first request waits for others (ms); 0: a batch is what arrived during the last one.",
        panel="Serving",
    )
    max_body_mb: float = option(8.0, "Largest request body (MB); larger ones get 413.", panel="Serving")
    max_items: int = option(20_000, "Most items in one ranking request (all queries); more get 413.", panel="Serving")
    max_batch_items: int = option(65_536, "Most padded items in one ranking forward (bounds memory).", panel="Serving")
    max_new_tokens: int = option(512, "Largest max_new_tokens a generation request may ask for.", panel="Serving")
    max_prompt_tokens: int = option(2048, "Longest prompt, in tokens; longer ones get 413.", panel="Serving")
    threads: int = option(0, "Torch threads per worker (0: torch's default).", panel="Serving")

    def __post_init__(self):
        check_choices(self)
        check_finite(self)
        for name in ("max_batch", "max_llm_batch", "max_items", "max_batch_items", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.max_body_mb <= 0 or self.threads < 0 or self.max_prompt_tokens < 1:
            raise ValueError("max_wait_ms and threads must be >= 0; max_body_mb and max_prompt_tokens > 0")
