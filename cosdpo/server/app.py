"""``cosdpo serve``: one HTTP app for a ranker or an LLM policy folder.

FastAPI on uvicorn: typed request and response schemas (pydantic) give the
422 answers and the OpenAPI page (``/docs``) for free, and uvicorn is the
ASGI server most deployments of FastAPI already run. The app holds nothing
but the loaded model, so N worker processes, or N machines behind a load
balancer, serve the same answers (docs/serving.md).
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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
    max_wait_ms: float = option(2.0, "How long the first request of a batch waits for others (ms).", panel="Serving")
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


class RequestError(Exception):
    """A request the model cannot answer: ``loc`` names the field, as pydantic's own errors do."""

    def __init__(self, loc, msg: str, status: int = 422):
        super().__init__(msg)
        self.loc, self.msg, self.status = list(loc), msg, status


def error_body(loc, msg: str, kind: str = "value_error") -> dict:
    return {"detail": [{"loc": list(loc), "msg": msg, "type": kind}]}


class BodyLimit:
    """413 for a body over ``max_bytes``, by its Content-Length or as it streams in (chunked)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            if length.isdigit() and int(length) <= 4 * self.max_bytes:
                # read (and drop) a body somewhat over the limit, so the client, still sending, gets the 413
                # rather than a reset connection; a far larger one is cut short
                while (await receive()).get("more_body", False):
                    pass
            return await self._reject(send)
        seen, started = 0, False

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracked)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send):
        mb = self.max_bytes / 1e6
        body = json.dumps(error_body(["body"], f"the request body is over this server's limit of {mb:g} MB")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def model_kind(path) -> str:
    """``ranker`` or ``llm`` for a model folder (or an ``.onnx`` ranker), or one line saying why neither."""
    path = Path(path)
    if path.is_file() and path.suffix == ".onnx":
        return "ranker"
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such model folder")
    if (path / "policy.json").is_file():
        return "llm"
    config = path / "config.json"
    if config.is_file():
        try:
            kind = json.loads(config.read_text()).get("format")
        except (ValueError, AttributeError):
            kind = None
        if kind == "cosdpo-ranker":
            return "ranker"
    raise ValueError(
        f"{path} is not a cosdpo model: a ranker folder has config.json and model.safetensors "
        "(ltr train-base, ltr finetune), a policy folder has policy.json (llm finetune)"
    )


def create_app(model_path, config: ServeConfig | None = None) -> FastAPI:
    """The app for the model at ``model_path``, loaded now: a bad folder fails here, before any port opens."""
    config = config or ServeConfig()
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    kind = model_kind(model_path)
    if kind == "ranker":
        from .ranking import RankingService as Service
    else:
        from .chat import LLMService as Service
    service = Service(model_path, config)

    @asynccontextmanager
    async def lifespan(app):
        service.start()
        yield
        await service.stop()

    app = FastAPI(
        title="cosdpo",
        summary="Every trade-off of one conditioned model, chosen per request.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError):
        return JSONResponse(error_body(exc.loc, exc.msg), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        # pydantic's errors without the input they quote: a bad 10 MB array is not sent back
        detail = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # FastAPI's 400 for a body it cannot decode, in the same shape as every other refusal
        loc = ["body"] if exc.status_code == 400 else []
        return JSONResponse(error_body(loc, str(exc.detail), "http_error"), exc.status_code, headers=exc.headers)

    @app.get("/healthz")
    async def healthz():
        """200 once the model is loaded and the server takes requests."""
        return {"status": "ok"}

    @app.get("/v1/model")
    async def describe():
        """The model served: kind, objectives, K, training beta, inputs; and the batching so far."""
        return service.card()

    service.routes(app)
    app.add_middleware(BodyLimit, max_bytes=int(config.max_body_mb * 1e6))
    return app


def _version() -> str:
    from .. import __version__

    return __version__


def run_server(model_path, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None, workers=1):
    """Load the model and serve it until stopped (Ctrl-C); with ``workers`` > 1, that many processes."""
    import os

    import uvicorn

    config = config or ServeConfig()
    if workers > 1:
        # each worker process builds its own app (and loads its own model) from these
        model_kind(model_path)  # a bad folder fails before any process starts
        os.environ["COSDPO_SERVE_MODEL"] = str(Path(model_path).resolve())
        os.environ["COSDPO_SERVE_CONFIG"] = json.dumps(config.__dict__)
        uvicorn.run("cosdpo.server.app:app_from_environment", host=host, port=port, workers=workers, factory=True)
        return
    uvicorn.run(create_app(model_path, config), host=host, port=port)


def app_from_environment() -> FastAPI:
    """The app of one worker process of ``cosdpo serve --workers N``."""
    import os

    config = ServeConfig(**json.loads(os.environ["COSDPO_SERVE_CONFIG"]))
    return create_app(os.environ["COSDPO_SERVE_MODEL"], config)
