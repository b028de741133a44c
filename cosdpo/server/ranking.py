"""``POST /v1/rank``: candidate lists scored under each query's own w and beta'.

Every query of every waiting request becomes one row of a single padded
forward (``serving.score_lists`` does the same for a Python caller).
"""

from __future__ import annotations

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from ..serving import check_list_beta, check_list_weights, condition_rows, item_inputs, load_scorer, pad_lists
from .app import RequestError
from .batching import BatchedService, Batcher
from .settings import ServeConfig

STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")


class Query(BaseModel):
    model_config = STRICT
    items: list[list[float]] = Field(
        min_length=1, description="Candidates: full LETOR rows, or the model's input features alone."
    )
    weights: list[float] | None = Field(None, description="The trade-off w: K weights on the simplex.")
    beta: float | list[float] | None = Field(
        None,
        description="Serving temperature beta' (default: the training beta); larger stays closer to the base. "
        "A Temperature-COS model takes one per objective.",
    )


class RankRequest(BaseModel):
    model_config = STRICT
    queries: list[Query] = Field(min_length=1)


class RankResult(BaseModel):
    scores: list[float] = Field(description="One score per item, in the request's item order.")
    order: list[int] = Field(description="Item indices, best first.")


class RankResponse(BaseModel):
    results: list[RankResult] = Field(description="One result per query, in the request's order.")


class RankingService(BatchedService):
    def __init__(self, path, config: ServeConfig):
        self.config, self.batching_enabled = config, config.batching
        self.scorer = load_scorer(path, config.backend)
        self.batcher = Batcher(
            self._run,
            max_batch=config.max_batch if config.batching else 1,
            max_wait=config.max_wait_ms / 1000,
            size=lambda request: sum(len(x) for x, _, _ in request),
            max_size=config.max_batch_items,
        )

    def card(self) -> dict:
        return {"type": "ranker", "backend": self.scorer.backend, **self.scorer.card, "batching": self.batching()}

    def check(self, request: RankRequest) -> list:
        """Each query as (input features, w, beta'), or a RequestError naming the field."""
        total = sum(len(q.items) for q in request.queries)
        if total > self.config.max_items:
            limit = self.config.max_items
            raise RequestError(["body", "queries"], f"{total} items in one request; the most is {limit}", 413)
        card, rows = self.scorer.card, []
        for i, q in enumerate(request.queries):
            where = ["body", "queries", i]
            try:
                x = item_inputs(self.scorer.schema, q.items)
            except ValueError as exc:
                raise RequestError([*where, "items"], str(exc)) from None
            try:
                w = check_list_weights(card, q.weights)
            except ValueError as exc:
                raise RequestError([*where, "weights"], str(exc)) from None
            try:
                b = check_list_beta(card, q.beta)
            except ValueError as exc:
                raise RequestError([*where, "beta"], str(exc)) from None
            rows.append((x, w, b))
        return rows

    def _run(self, requests: list) -> list:
        lists = [row for request in requests for row in request]
        x, mask = pad_lists([items for items, _, _ in lists])
        scores = self.scorer(x, mask, *condition_rows(self.scorer.card, [(w, b) for _, w, b in lists]))
        out, i = [], 0
        for request in requests:
            out.append([scores[i + j, : len(items)] for j, (items, _, _) in enumerate(request)])
            i += len(request)
        return out

    def routes(self, app: FastAPI):
        @app.post("/v1/rank", response_model=RankResponse)
        async def rank(request: RankRequest):
            """Scores and order of each query's items under its own w (and beta')."""
            scores = await self.batcher.submit(self.check(request))
            return {
                "results": [{"scores": s.tolist(), "order": np.argsort(-s, kind="stable").tolist()} for s in scores]
            }
