"""HTTP serving of a ranker or an LLM policy: ``cosdpo serve`` (docs/serving.md)."""

from .app import ServeConfig, create_app, run_server

__all__ = ["ServeConfig", "create_app", "run_server"]
