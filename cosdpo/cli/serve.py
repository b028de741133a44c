"""``cosdpo serve``: an HTTP server for a ranker or an LLM policy folder (``cosdpo.server``)."""

from __future__ import annotations

from ..config import from_dict
from ..server.settings import ServeConfig
from .options import Input, config_command

MODEL = Input("model_dir", "A ranker folder, a ranker's .onnx export, or an LLM policy folder.", argument=True)
HOST = Input("host", "Interface to listen on (0.0.0.0: every interface).", False, False, default="127.0.0.1")
PORT = Input("port", "TCP port.", False, False, default=8000)
WORKERS = Input("workers", "Worker processes, each with its own copy of the model.", False, False, default=1)


def _serve(given, values):
    try:
        from ..server.app import run_server
    except ImportError as exc:
        raise ValueError(
            f"cosdpo serve needs the serve extra ({exc.name} is missing): pip install 'cosdpo[serve]'"
        ) from None

    cfg = from_dict(ServeConfig, values["serve"], "serve")
    if given["workers"] < 1:
        raise ValueError(f"--workers must be >= 1, got {given['workers']}")
    run_server(given["model_dir"], given["host"], given["port"], cfg, workers=given["workers"])


def register(app):
    config_command(
        app,
        "serve",
        "serve",
        {"serve": ServeConfig},
        [MODEL, HOST, PORT, WORKERS],
        _serve,
        "Serve a model over HTTP: POST /v1/rank, or /v1/generate and /v1/chat/completions; w and beta' per request.",
    )
