"""Many machines: the same app as a Ray Serve deployment (``pip install "cosdpo[ray]"``).

Ray places the replicas on a cluster's machines, routes requests to them and
restarts them; each replica builds the app ``cosdpo serve`` runs (the builder
runs on the replica, so the model loads there and is never pickled), so the
endpoints, batching and refusals are the same.

    serve run cosdpo.server.ray_serve:app_builder model_dir=runs/wcos replicas=4

or from Python: ``serve.run(deployment("runs/wcos", replicas=4))``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ray import serve

from .app import model_kind
from .settings import ServeConfig


def deployment(model_dir, config: ServeConfig | None = None, replicas: int = 1, cpus_per_replica: float = 1.0):
    """A bound Ray Serve application of ``replicas`` copies of the app for ``model_dir``."""
    path = str(Path(model_dir).resolve())
    model_kind(path)  # a bad folder fails here, before any replica starts
    settings = dataclasses.asdict(config or ServeConfig())

    def build():
        from .app import create_app

        return create_app(path, ServeConfig(**settings))

    @serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": cpus_per_replica})
    @serve.ingress(build)
    class CosdpoServer:
        pass

    return CosdpoServer.bind()


def app_builder(args: dict):
    """``serve run cosdpo.server.ray_serve:app_builder model_dir=DIR [replicas=N] [any ServeConfig field=value]``."""
    args = dict(args)
    if "model_dir" not in args:
        raise ValueError("give model_dir=DIR (a ranker folder, a ranker's .onnx export, or an LLM policy folder)")
    model_dir, replicas = args.pop("model_dir"), int(args.pop("replicas", 1))
    cpus = float(args.pop("cpus_per_replica", 1.0))
    fields = {f.name: f.type for f in dataclasses.fields(ServeConfig)}
    unknown = sorted(set(args) - set(fields))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; ServeConfig has {sorted(fields)}")
    defaults = ServeConfig()
    values = {k: _parse(v, type(getattr(defaults, k))) for k, v in args.items()}
    return deployment(model_dir, ServeConfig(**values), replicas, cpus)


def _parse(text, kind):
    if kind is bool and isinstance(text, str):
        return text.lower() in ("1", "true", "yes", "on")
    return kind(text)
