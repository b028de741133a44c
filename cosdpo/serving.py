"""Scoring candidate lists under chosen trade-offs, after training.

``score_items`` scores one list; ``score_lists`` scores many, each with its
own w and beta', in ONE padded forward: what a server does with the requests
it gathers, and what ``ltr predict`` does with a file's queries. The forward
runs either in torch (``TorchScorer``) or in ONNX Runtime on a file written by
``export_onnx`` (``OnnxScorer``); both take the same padded arrays.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .models.ranker import BaseRanker, ConditionedRanker
from .simplex import check_simplex

ONNX_FORMAT = {"format": "cosdpo-ranker-onnx", "version": 1}


def item_inputs(schema, items) -> np.ndarray:
    """(n_items, n_inputs) float32 from full LETOR rows or the model's input features alone."""
    try:
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused below
            X = np.asarray(items, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError("items must be rows of numbers, every row of the same length") from None
    if X.ndim != 2:
        raise ValueError(f"items must be a 2-D array (n_items, n_features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError("items is empty: give at least one candidate")
    if X.shape[1] == schema.n_features:
        X = X[:, np.asarray(schema.inputs) - 1]
    elif X.shape[1] != len(schema.inputs):
        raise ValueError(
            f"items have {X.shape[1]} features; the model takes either the full LETOR row "
            f"({schema.n_features}) or its {len(schema.inputs)} input features"
        )
    if not np.all(np.isfinite(X)):
        i, j = np.argwhere(~np.isfinite(X))[0]
        raise ValueError(f"item {i} has a NaN or infinite feature (column {j}): one would make every score NaN")
    return np.ascontiguousarray(X)


def model_card(model) -> dict:
    """What a caller needs to know to call a ranker: its kind, objectives and inputs."""
    s = model.schema
    card = {"kind": "base", "features": s.n_features, "inputs": len(s.inputs), "objectives": [], "K": 0}
    if isinstance(model, ConditionedRanker):
        card |= {
            "kind": {"wcos": "weight-cos", "tcos": "temperature-cos", "fixed": "fixed-weight"}[model.method],
            "objectives": s.objective_names,
            "K": model.n_objectives,
            "beta": model.beta,
        }
        if model.method == "tcos":
            card["beta_range"] = list(model.beta_range)
    return card


def uses_weights(card: dict) -> bool:
    return card["kind"] in ("weight-cos", "temperature-cos")


def check_list_weights(card: dict, w) -> np.ndarray | None:
    """One list's w as float32 (K,), or a ValueError; None for a base ranker. A fixed-weight baseline
    ignores w, so it may be left out."""
    if card["kind"] == "base":
        if w is not None:
            raise ValueError("a base ranker is not conditioned: pass no weights")
        return None
    if w is None:
        if uses_weights(card):
            raise ValueError(f"a conditioned ranker needs weights for its objectives {card['objectives']}")
        return np.full(card["K"], 1 / card["K"], dtype=np.float32)
    return check_simplex(w, card["K"]).astype(np.float32)


def check_list_beta(card: dict, beta) -> np.ndarray | None:
    """One list's beta' as float32 (n,) (None: the training temperature), or a ValueError."""
    if beta is None:
        return None
    if card["kind"] == "base":
        raise ValueError("a base ranker is not conditioned: pass no temperature")
    b = np.atleast_1d(np.asarray(beta, dtype=np.float64))
    if b.ndim != 1 or not np.all(np.isfinite(b)) or np.any(b <= 0):
        raise ValueError(f"temperatures must be finite and > 0, got {np.asarray(beta).tolist()}")
    if card["kind"] == "temperature-cos":
        if len(b) not in (1, card["K"]):
            raise ValueError(f"got {len(b)} temperatures for {card['K']} objectives {card['objectives']}")
    elif len(b) != 1:
        raise ValueError("this model has one temperature: give a single beta (a vector needs a Temperature-COS model)")
    return b.astype(np.float32)


def check_list_conditions(card: dict, w, beta):
    """(w, beta') of one list, checked as ``check_simplex`` and ``ConditionedRanker.check_beta`` do:
    a server refuses one request this way before it joins a batch with others."""
    return check_list_weights(card, w), check_list_beta(card, beta)


def pad_lists(lists: list[np.ndarray]):
    """(x (B, L, F), mask (B, L)) for lists of different lengths."""
    L, F = max(len(x) for x in lists), lists[0].shape[1]
    x = np.zeros((len(lists), L, F), dtype=np.float32)
    mask = np.zeros((len(lists), L), dtype=bool)
    for i, items in enumerate(lists):
        x[i, : len(items)], mask[i, : len(items)] = items, True
    return x, mask


def condition_rows(card: dict, conditions) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(w (B, K), beta (B, n)) for checked ``(w, beta)`` pairs; a list without beta gets the training one."""
    if card["kind"] == "base":
        return None, None
    w = np.stack([c[0] for c in conditions]).astype(np.float32)
    n = card["K"] if card["kind"] == "temperature-cos" else 1
    beta = np.stack(
        [np.full(n, card["beta"], np.float32) if b is None else np.broadcast_to(b, (n,)) for _, b in conditions]
    )
    return w, beta.astype(np.float32)


class TorchScorer:
    """Padded lists -> scores with the torch model (no gradients, eval mode)."""

    backend = "torch"

    def __init__(self, model):
        self.model = model.eval()
        self.card = model_card(model)
        self.schema = model.schema

    @torch.no_grad()
    def __call__(self, x, mask, w=None, beta=None) -> np.ndarray:
        x, mask = torch.from_numpy(x), torch.from_numpy(mask)
        if isinstance(self.model, BaseRanker):
            return self.model(x, mask).numpy()
        return self.model.scores(x, mask, torch.from_numpy(w), None, torch.from_numpy(beta)).numpy()


class _Graph(nn.Module):
    """The forward ONNX export traces: every input a tensor, no checks (the callers check)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, features, mask, weights=None, beta=None):
        if isinstance(self.model, BaseRanker):
            return self.model(features, mask)
        return self.model.scores(features, mask, weights, None, beta)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints its progress and logs missing torchvision ops; a user asked for a file."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        log.setLevel(level)


def export_onnx(model, path) -> Path:
    """Write ``model`` as an ONNX file whose inputs are the input features, the mask, w and beta'.

    Batch and list length are dynamic; ``weights`` is (batch, K) and ``beta``
    (batch, 1), or (batch, K) for a Temperature-COS model. The model card
    (objectives, inputs, training beta) travels in the file's metadata.
    """
    import onnx

    path = Path(path)
    model = model.eval()
    card = model_card(model)
    x, mask = pad_lists([np.ones((3, len(model.schema.inputs)), np.float32), np.ones((2, len(model.schema.inputs)))])
    args, names, dynamic = [torch.from_numpy(x), torch.from_numpy(mask)], ["features", "mask"], {0: "batch"}
    shapes = {"features": {0: "batch", 1: "items"}, "mask": {0: "batch", 1: "items"}}
    if card["kind"] != "base":
        w, beta = condition_rows(card, [check_list_conditions(card, [1 / card["K"]] * card["K"], None)] * 2)
        args += [torch.from_numpy(w), torch.from_numpy(beta)]
        names += ["weights", "beta"]
        shapes |= {"weights": dynamic, "beta": dynamic}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings(), _quiet_exporter():
        # torch's exporter warns about its own internals (pytree specs, merged axis names): nothing to act on
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*axis name.*")
        program = torch.onnx.export(
            _Graph(model).eval(),
            tuple(args),
            dynamo=True,
            verbose=False,
            input_names=names,
            output_names=["scores"],
            dynamic_shapes=shapes,
        )
    proto = program.model_proto
    meta = ONNX_FORMAT | {"card": card, "inputs": list(model.schema.inputs)}
    entry = proto.metadata_props.add()
    entry.key, entry.value = "cosdpo", json.dumps(meta)
    onnx.save(proto, tmp)
    tmp.replace(path)
    return path


class OnnxScorer:
    """Padded lists -> scores with ONNX Runtime, from a file written by ``export_onnx``."""

    backend = "onnx"

    def __init__(self, path, threads: int | None = None):
        import onnxruntime as ort

        from .data.objectives import Schema

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own error types for a missing, foreign or broken file
            raise ValueError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map.get("cosdpo")
        if meta is None:
            raise ValueError(f"{path}: not a cosdpo ranker export (no cosdpo metadata)")
        meta = json.loads(meta)
        if meta.get("format") != ONNX_FORMAT["format"] or meta.get("version") != ONNX_FORMAT["version"]:
            raise ValueError(f"{path}: unsupported export format {meta.get('format')} v{meta.get('version')}")
        self.card = meta["card"]
        self.schema = Schema(self.card["features"], meta["inputs"])

    def __call__(self, x, mask, w=None, beta=None) -> np.ndarray:
        feed = {"features": x, "mask": mask}
        if self.card["kind"] != "base":
            feed |= {"weights": w, "beta": beta}
        return self.session.run(None, feed)[0]


def as_scorer(model):
    return model if isinstance(model, TorchScorer | OnnxScorer) else TorchScorer(model)


def score_lists(model, lists, weights=None, betas=None) -> list[np.ndarray]:
    """Scores of many candidate lists in one padded forward, each under its own w and beta'.

    ``lists``: item arrays (n_i, n_features); ``weights``: one w per list
    (None for a base ranker); ``betas``: one beta' per list (None: the
    training temperature; a K-vector for a Temperature-COS model).
    ``model``: a ranker, or a ``TorchScorer`` / ``OnnxScorer``.
    """
    scorer = as_scorer(model)
    n = len(lists)
    weights = [None] * n if weights is None else list(weights)
    betas = [None] * n if betas is None else list(betas)
    if not n or len(weights) != n or len(betas) != n:
        raise ValueError(f"give at least one list, and as many weights and betas as lists ({n})")
    items = [item_inputs(scorer.schema, x) for x in lists]
    conditions = [check_list_conditions(scorer.card, w, b) for w, b in zip(weights, betas)]
    x, mask = pad_lists(items)
    scores = scorer(x, mask, *condition_rows(scorer.card, conditions))
    return [scores[i, : len(it)] for i, it in enumerate(items)]


def score_items(model, items, w=None, beta_prime=None) -> np.ndarray:
    """Scores of one candidate list: ``items`` is (n_items, n_features).

    For a conditioned model ``w`` is the trade-off (K weights on the
    simplex) and ``beta_prime`` the temperature to serve: a number beta' for a
    Weight-COS model (s_base + (beta / beta') (s - s_base): larger stays
    closer to the base), or one per objective for a Temperature-COS model.
    A base model takes neither.
    """
    if not isinstance(model, BaseRanker | ConditionedRanker):
        raise TypeError(f"cannot score with a {type(model).__name__}")
    return score_lists(model, [items], [w], [beta_prime])[0]


def rank_items(model, items, w=None, beta_prime=None) -> np.ndarray:
    """Item indices, best first."""
    return np.argsort(-score_items(model, items, w, beta_prime), kind="stable")


def predict_file(model, path, w=None, beta_prime=None, max_items: int = 32768, progress: bool = False) -> np.ndarray:
    """One score per row of a LETOR file, in the file's order, every query scored as one list.

    Queries are sorted by length and scored in padded batches of at most
    ``max_items`` padded items, so a file of any size runs in bounded memory.
    """
    from tqdm.auto import tqdm

    from .data.letor import read_letor

    scorer = as_scorer(model)
    data = read_letor(path, n_features=scorer.schema.n_features, max_label=None)
    condition = check_list_conditions(scorer.card, w, beta_prime)
    _, group = np.unique(data.qid, return_inverse=True)
    rows = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[rows])) + 1
    lists = sorted(np.split(rows, bounds), key=len)
    scores = np.zeros(len(data.qid), dtype=np.float32)
    bar = tqdm(total=len(lists), desc="scoring queries", unit="query", disable=not progress)
    start = 0
    while start < len(lists):
        stop = start + 1
        while stop < len(lists) and (stop + 1 - start) * len(lists[stop]) <= max_items:
            stop += 1
        chunk = lists[start:stop]
        x, mask = pad_lists([item_inputs(scorer.schema, data.X[r]) for r in chunk])
        s = scorer(x, mask, *condition_rows(scorer.card, [condition] * len(chunk)))
        for i, r in enumerate(chunk):
            scores[r] = s[i, : len(r)]
        bar.update(len(chunk))
        start = stop
    bar.close()
    return scores


def load_scorer(path, backend: str = "torch"):
    """A scorer from a ranker folder (torch, or exported to ONNX in memory) or an ``.onnx`` file."""
    from .models.ranker import load_ranker

    path = Path(path)
    if path.suffix == ".onnx" or path.is_file():
        return OnnxScorer(path)
    model = load_ranker(path)
    if backend == "torch":
        return TorchScorer(model)
    if backend == "onnx":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return OnnxScorer(export_onnx(model, Path(tmp) / "model.onnx"))
    raise ValueError(f"backend must be torch or onnx, got {backend!r}")
