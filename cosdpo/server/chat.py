"""LLM routes: ``POST /v1/generate`` and the OpenAI-compatible ``POST /v1/chat/completions``.

Prompts that wait together are decoded in ONE loop (``generation.generate_ids``):
each row carries its own w, its own beta' and its own decoding options and
seed, so a request's answer does not depend on its batch mates. w and beta'
ride in the chat request as extra body fields (``extra_body`` in the
``openai`` client), so existing clients work unchanged.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..data.tokenize import prompt_ids
from ..generation import Decoding, check_beta_prime, generate_ids
from ..simplex import check_simplex
from .app import RequestError
from .batching import BatchedService, Batcher
from .settings import ServeConfig


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str


CONDITIONS = {
    "weights": "The trade-off w: K weights on the simplex (chat: default 1/K each).",
    "beta": "Serving temperature beta' (default: the training beta); larger stays closer to the base model.",
}


class GenerateRequest(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")
    prompt: str | None = Field(None, description="A user prompt (or give messages).")
    messages: list[Message] | None = Field(None, min_length=1, description="A chat, ending where the answer goes.")
    weights: list[float] = Field(description=CONDITIONS["weights"])
    beta: float | None = Field(None, description=CONDITIONS["beta"])
    max_new_tokens: int = Field(128, ge=1)
    do_sample: bool = Field(False, description="Sample (temperature, top_p, seed) instead of greedy decoding.")
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stream: bool = Field(False, description="Server-sent events, one per new piece of text.")


class ChatRequest(BaseModel):
    """OpenAI's chat completion request; fields it does not use are ignored, as OpenAI's clients expect."""

    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, description="0: greedy. Default 1, as OpenAI's.")
    top_p: float | None = None
    seed: int | None = None
    n: Literal[1] = 1
    stream: bool = False
    weights: list[float] | None = Field(None, description=CONDITIONS["weights"])
    beta: float | None = Field(None, description=CONDITIONS["beta"])


@dataclass
class Job:
    ids: list[int]
    w: list[float]
    ratio: float
    decoding: Decoding
    emit: object = None  # called with each new token id (streaming), then with None


class LLMService(BatchedService):
    def __init__(self, path, config: ServeConfig):
        from ..models.llm import load_policy, read_policy_info

        read_policy_info(path)  # a broken folder fails in one line before the model loads
        self.config, self.name, self.batching_enabled = config, Path(path).name, config.batching
        self.policy, self.tokenizer, self.info = load_policy(path)
        self.device = next(self.policy.parameters()).device
        self.batcher = Batcher(
            self._run, max_batch=config.max_llm_batch if config.batching else 1, max_wait=config.max_wait_ms / 1000
        )

    def card(self) -> dict:
        return {
            "type": "llm",
            "kind": "weight-cos",
            "name": self.name,
            "base_model": self.info["base_model"],
            "objectives": self.info["objectives"],
            "K": len(self.info["objectives"]),
            "beta": self.info["beta"],
            "prompt_template": self.info["config"]["prompt_template"],
            "batching": self.batching(),
        }

    # -- checks: every field before the request joins a batch

    def job(self, messages, weights, beta, decoding: dict, where: str) -> Job:
        try:
            w = check_simplex(weights, len(self.info["objectives"])).tolist()
        except ValueError as exc:
            raise RequestError(["body", "weights"], str(exc)) from None
        try:
            check_beta_prime(beta)
        except ValueError as exc:
            raise RequestError(["body", "beta"], str(exc)) from None
        limit = self.config.max_new_tokens
        if decoding["max_new_tokens"] > limit:
            raise RequestError(["body", where], f"at most {limit} new tokens on this server")
        try:
            decoding = Decoding(**decoding)
        except ValueError as exc:
            raise RequestError(["body"], str(exc)) from None
        try:
            ids = prompt_ids(self.tokenizer, [m.model_dump() for m in messages])
        except Exception as exc:  # the chat template's own errors (e.g. roles it does not accept)
            raise RequestError(["body", "messages"], f"the prompt template refused these messages: {exc}") from None
        if len(ids) > self.config.max_prompt_tokens:
            raise RequestError(
                ["body", "messages"], f"the prompt has {len(ids)} tokens; at most {self.config.max_prompt_tokens}", 413
            )
        ratio = 1.0 if beta is None else self.info["beta"] / beta
        return Job(ids, w, ratio, decoding)

    # -- the batch: one decoding loop for every waiting prompt

    def _run(self, jobs: list[Job]) -> list[list[int]]:
        try:
            T, pad = max(len(j.ids) for j in jobs), self.tokenizer.pad_token_id
            ids = torch.full((len(jobs), T), pad, dtype=torch.long)
            mask = torch.zeros((len(jobs), T), dtype=torch.long)
            for i, j in enumerate(jobs):  # LEFT padding: every prompt ends where its answer starts
                ids[i, T - len(j.ids) :], mask[i, T - len(j.ids) :] = torch.tensor(j.ids), 1
            streams = [(i, j.emit) for i, j in enumerate(jobs) if j.emit is not None]

            def on_step(tokens):
                for i, emit in streams:
                    if tokens[i] >= 0:
                        emit(int(tokens[i]))

            new = generate_ids(
                self.policy,
                ids.to(self.device),
                mask.to(self.device),
                torch.tensor([j.w for j in jobs], dtype=torch.float32, device=self.device),
                ratio=torch.tensor([j.ratio for j in jobs]),
                eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=pad,
                rows=[j.decoding for j in jobs],
                on_step=on_step if streams else None,
            )
            return [self._answer(row, j.decoding.max_new_tokens) for row, j in zip(new.tolist(), jobs)]
        finally:
            for j in jobs:
                if j.emit is not None:
                    j.emit(None)

    def _answer(self, row: list[int], limit: int) -> list[int]:
        eos = self.tokenizer.eos_token_id
        return row[: row.index(eos) + 1] if eos in row else row[:limit]

    def finish_reason(self, tokens: list[int]) -> str:
        return "stop" if tokens and tokens[-1] == self.tokenizer.eos_token_id else "length"

    def text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    async def stream(self, job: Job, chunk):
        """Server-sent events: ``chunk(text, finish_reason)`` for each new piece of text, then [DONE]."""
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        job.emit = lambda token: loop.call_soon_threadsafe(queue.put_nowait, token)
        answer = asyncio.ensure_future(self.batcher.submit(job))
        tokens, sent = [], ""
        while (token := await queue.get()) is not None:
            tokens.append(token)
            text = self.text(tokens)
            if text.endswith("\ufffd"):  # a character split across tokens: wait for its end
                continue
            if len(text) > len(sent):
                yield f"data: {json.dumps(chunk(text[len(sent) :], None))}\n\n"
                sent = text
        tokens = await answer
        yield f"data: {json.dumps(chunk('', self.finish_reason(tokens)))}\n\n"
        yield "data: [DONE]\n\n"

    def routes(self, app: FastAPI):
        @app.post("/v1/generate")
        async def generate(request: GenerateRequest):
            """An answer under the trade-off w (and temperature beta')."""
            if (request.prompt is None) == (request.messages is None):
                raise RequestError(["body", "prompt"], "give either prompt or messages, not both")
            messages = request.messages or [Message(role="user", content=request.prompt)]
            options = request.model_dump(include={"max_new_tokens", "do_sample", "temperature", "top_p", "seed"})
            job = self.job(messages, request.weights, request.beta, options, "max_new_tokens")
            if request.stream:
                return StreamingResponse(
                    self.stream(job, lambda text, reason: {"text": text, "finish_reason": reason}),
                    media_type="text/event-stream",
                )
            tokens = await self.batcher.submit(job)
            return {
                "text": self.text(tokens).strip(),
                "finish_reason": self.finish_reason(tokens),
                "usage": {"prompt_tokens": len(job.ids), "completion_tokens": len(tokens)},
            }

        @app.get("/v1/models")
        async def models():
            """OpenAI's model list: the one policy served."""
            return {"object": "list", "data": [{"id": self.name, "object": "model", "owned_by": "cosdpo"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: ChatRequest):
            """OpenAI's chat completion, with ``weights`` and ``beta`` as extra body fields."""
            K = len(self.info["objectives"])
            temperature = 1.0 if request.temperature is None else request.temperature
            options = {
                "max_new_tokens": request.max_completion_tokens or request.max_tokens or 128,
                "do_sample": temperature > 0,
                "temperature": temperature if temperature > 0 else 1.0,
                "top_p": 1.0 if request.top_p is None else request.top_p,
                "seed": secrets.randbits(31) if request.seed is None else request.seed,
            }
            where = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
            weights = request.weights if request.weights is not None else [1 / K] * K
            job = self.job(request.messages, weights, request.beta, options, where)
            ident, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
            head = {"id": ident, "created": created, "model": self.name}
            if request.stream:

                def chunk(text, reason):
                    delta = {"role": "assistant", "content": text} if text else {}
                    choice = {"index": 0, "delta": delta, "finish_reason": reason}
                    return head | {"object": "chat.completion.chunk", "choices": [choice]}

                return StreamingResponse(self.stream(job, chunk), media_type="text/event-stream")
            tokens = await self.batcher.submit(job)
            message = {"role": "assistant", "content": self.text(tokens).strip()}
            n, m = len(job.ids), len(tokens)
            return head | {
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason(tokens)}],
                "usage": {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m},
            }
