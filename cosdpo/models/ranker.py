"""List scorers: the base ranker and the w-conditioned ranker.

Both are small transformers over the items of a group (self-attention lets
a document's score depend on its competitors), saved as a folder with
``config.json`` and ``model.safetensors``: no pickle, loadable anywhere.

The conditioned ranker always carries its frozen base, because serving
needs s_base too (the reference of the implicit reward, and the anchor of
post-training temperature control). Two parametrisations (docs/method.md):

- ``scratch``: s(x, w) is a fresh transformer on [x, w];
- ``augment``: s(x, w) = s_base(x) + delta(x, w) with delta's output layer
  zero-initialised, so training starts exactly at the base model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..atomic import atomic_file, check_format, write_json
from ..config import option
from ..data.objectives import Schema
from ..simplex import dirichlet_standardiser
from .dropout import Dropout

PARAMETRISATIONS = ("scratch", "augment")
METHODS = ("wcos", "tcos", "fixed")  # fixed: unconditioned (baselines), w is ignored
RANKER_FORMAT = {"format": "cosdpo-ranker", "version": 1}


def signed_log1p(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


class FeatureNorm(nn.Module):
    """sign(x) log(1 + |x|), then standardise with statistics of the training set.

    LETOR features span 0..1e7; the log squashes the heavy tails, and the
    statistics are buffers so they travel with the weights.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, features: np.ndarray, chunk: int = 1 << 18):
        """Mean and (unbiased) std of the transformed features, summed in float64 over row blocks, so a
        memory-mapped matrix of millions of rows is never copied whole."""
        n = len(features)
        total = torch.zeros(features.shape[1], dtype=torch.float64)
        squares = torch.zeros_like(total)
        for i in range(0, n, chunk):
            z = signed_log1p(torch.from_numpy(np.ascontiguousarray(features[i : i + chunk], dtype=np.float32)))
            total += z.sum(0, dtype=torch.float64)
            squares += z.double().square().sum(0)
        mean = total / max(n, 1)
        var = (squares - n * mean.square()) / max(n - 1, 1)
        self.mean.copy_(mean.float())
        self.std.copy_(var.clamp_min(0).sqrt().float().clamp_min(1e-6))

    def forward(self, x):
        return (signed_log1p(x) - self.mean) / self.std


@dataclass
class ScorerConfig:
    """The list transformer's shape."""

    d_model: int = option(128, "Transformer width.", panel="Model")
    n_layers: int = option(2, "Transformer layers.", panel="Model", cli="--layers")
    n_heads: int = option(4, "Attention heads.", panel="Model", cli="--heads")
    ff_mult: int = option(2, "Feed-forward width as a multiple of --d-model.", panel="Model")
    dropout: float = option(0.1, "Dropout of the feed-forward and residual paths.", panel="Model")
    attn_dropout: float = option(
        0.0, "Dropout of the attention weights (> 0 disables torch's fused attention kernel).", panel="Model"
    )

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        for name in ("dropout", "attn_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if min(self.d_model, self.n_layers, self.n_heads, self.ff_mult) < 1:
            raise ValueError("d_model, n_layers, n_heads and ff_mult must be >= 1")


class ListTransformer(nn.Module):
    """Scores every item of a padded group; padded items never reach real ones."""

    def __init__(self, in_dim: int, cfg: ScorerConfig):
        super().__init__()
        self.proj = nn.Linear(in_dim, cfg.d_model)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.n_heads, cfg.ff_mult * cfg.d_model, cfg.dropout, batch_first=True, norm_first=True
        )
        # Why no attention dropout by default: with it, torch computes attention in full (B, H, L, L)
        # tensors; without it, a fused kernel that never holds them. A batch of 32 lists of 1,251
        # documents (MSLR's longest) then trains 4x faster in a quarter of the memory.
        layer.self_attn.dropout = cfg.attn_dropout
        # torch draws CPU dropout masks on one core, a fifth of a training step (models/dropout.py)
        layer.dropout, layer.dropout1, layer.dropout2 = (Dropout(cfg.dropout) for _ in range(3))
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        # no biases at the output: listwise losses ignore a shift shared by all
        # items, so such a bias would get pure rounding noise as its gradient
        # (which Adam then amplifies into real steps)
        self.norm = nn.LayerNorm(cfg.d_model, bias=False)
        self.head = nn.Linear(cfg.d_model, 1, bias=False)

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(torch.relu(self.proj(z)), src_key_padding_mask=~mask)
        return self.head(self.norm(h)).squeeze(-1).masked_fill(~mask, 0.0)


class BaseRanker(nn.Module):
    kind = "base"

    def __init__(self, schema: Schema, cfg: ScorerConfig | None = None):
        super().__init__()
        self.schema, self.cfg = schema, cfg or ScorerConfig()
        self.norm = FeatureNorm(len(schema.inputs))
        self.net = ListTransformer(len(schema.inputs), self.cfg)

    def forward(self, x, mask):
        return self.net(self.norm(x), mask)

    def config_dict(self) -> dict:
        return {"kind": self.kind, "schema": self.schema.to_dict(), "scorer": asdict(self.cfg)}


class ConditionedRanker(nn.Module):
    """s_theta(x, w) (Weight-COS) or s_theta(x, w, beta) (Temperature-COS).

    ``method="wcos"``: trained at one temperature ``beta``; any other
    temperature beta' is served by the linear transformation (docs/method.md, temperature control)
    s_beta' = s_base + (beta / beta') (s_beta - s_base).

    ``method="tcos"``: the network also sees beta_hat = beta / ||beta||_1 and
    the overall scale is applied outside it (docs/method.md, Temperature-COS-DPO):
    s = s_base + (f(x, w, beta_hat) - s_base) / ||beta||_1, so that
    beta_k (s - s_base) = beta_hat_k (f - s_base) for every objective k.
    """

    kind = "conditioned"

    def __init__(
        self,
        base: BaseRanker,
        schema: Schema,
        cfg: ScorerConfig | None = None,
        parametrisation: str = "augment",
        beta: float = 1.0,
        alpha: float = 1.0,
        method: str = "wcos",
        beta_range: tuple[float, float] = (0.1, 10.0),
    ):
        super().__init__()
        if parametrisation not in PARAMETRISATIONS:
            raise ValueError(f"parametrisation must be one of {PARAMETRISATIONS}, got {parametrisation!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if list(base.schema.inputs) != list(schema.inputs):
            raise ValueError("the base ranker and the fine-tuning schema use different input features")
        self.schema, self.cfg = schema, cfg or ScorerConfig(d_model=64)
        self.parametrisation, self.beta, self.alpha = parametrisation, float(beta), float(alpha)
        self.method, self.beta_range = method, (float(beta_range[0]), float(beta_range[1]))
        # w (and beta_hat) enter standardised under their training
        # distributions, as the features do: raw w (std ~0.3 among 131
        # unit-scale features) is too faint, and the network learns to ignore it
        K = self.n_objectives
        self.w_center, self.w_scale = dirichlet_standardiser(K, self.alpha)
        self.b_scale = 1.0 / max(float(np.std(beta_hat_samples(K, self.beta_range))), 1e-6)
        self.base = base.requires_grad_(False).eval()
        n_cond = {"wcos": K, "tcos": 2 * K, "fixed": 0}[method]
        self.net = ListTransformer(len(schema.inputs) + n_cond, self.cfg)
        if parametrisation == "augment":
            nn.init.zeros_(self.net.head.weight)

    @property
    def n_objectives(self) -> int:
        return len(self.schema.objectives)

    def train(self, mode: bool = True):
        super().train(mode)
        self.base.eval()  # frozen reference: never dropout
        return self

    def base_scores(self, x, mask):
        with torch.no_grad():
            return self.base(x, mask)

    def check_beta(self, beta) -> torch.Tensor | None:
        """Validate a serving temperature: a number (both methods) or a K-vector (tcos); as a
        (1, n) row, or (B, n) when given one row per list (n = 1 or K)."""
        if beta is None:
            return None
        b = torch.as_tensor(beta, dtype=torch.float32)
        b = b.reshape(1, -1) if b.dim() < 2 else b
        if b.dim() != 2 or b.shape[1] == 0:
            raise ValueError(f"temperatures must be a number, a vector or one row per list, not shape {tuple(b.shape)}")
        if not torch.all(torch.isfinite(b)) or torch.any(b <= 0):
            raise ValueError(f"temperatures must be finite and > 0, got {b.tolist()}")
        if b.shape[1] not in (1, self.n_objectives):
            raise ValueError(
                f"got {b.shape[1]} temperatures for {self.n_objectives} objectives {self.schema.objective_names}"
            )
        if b.shape[1] > 1 and self.method != "tcos":
            raise ValueError(
                "a Weight-COS model has one temperature: give a single beta (a per-objective "
                "vector needs a Temperature-COS model, --method tcos)"
            )
        return b

    def forward(self, x, mask, w, base_scores=None, beta=None):
        """Scores under weights ``w`` ((K,) or (B, K)) and temperature ``beta``.

        ``beta=None`` serves the training temperature (tcos: beta for every
        objective); a (B, n) tensor gives each list its own. ``base_scores`` may
        be passed in when computed once for the whole dataset (the base is
        frozen, so they never change).
        """
        return self.scores(x, mask, w, base_scores, self.check_beta(beta))

    def scores(self, x, mask, w, base_scores=None, beta=None):
        """``forward`` without the checks on beta (a checked (1 or B, n) tensor, or None): the
        graph that ONNX export traces, free of data-dependent branches."""
        B, L, _ = x.shape
        cond = [x.new_zeros(B, 0)]
        if self.method != "fixed":  # an unconditioned baseline ignores w
            w = w.to(x.dtype)
            w = w.expand(B, -1) if w.dim() == 1 else w
            cond = [(w - self.w_center) * self.w_scale]
        if self.method == "tcos":
            b = torch.full((1, self.n_objectives), self.beta) if beta is None else beta
            b = b.to(x.device, x.dtype).expand(B, self.n_objectives)
            total = b.sum(-1, keepdim=True)
            cond.append((b / total - self.w_center) * self.b_scale)
        cond = torch.cat(cond, dim=-1)
        z = torch.cat([self.base.norm(x), cond[:, None, :].expand(B, L, -1)], dim=-1)
        out = self.net(z, mask)
        if self.parametrisation == "augment" or beta is not None or self.method == "tcos":
            if base_scores is None:
                base_scores = self.base_scores(x, mask)
        if self.parametrisation == "augment":
            out = out + base_scores
        if self.method == "tcos":
            out = base_scores + (out - base_scores) / total
        elif beta is not None:
            out = base_scores + (self.beta / beta.to(x.device, x.dtype)) * (out - base_scores)
        return out.masked_fill(~mask, 0.0)

    def config_dict(self) -> dict:
        return {
            "kind": self.kind,
            "schema": self.schema.to_dict(),
            "scorer": asdict(self.cfg),
            "parametrisation": self.parametrisation,
            "method": self.method,
            "beta": self.beta,
            "alpha": self.alpha,
            "beta_range": list(self.beta_range),
            "base": self.base.config_dict(),
        }


def beta_hat_samples(K: int, beta_range, n: int = 4096) -> np.ndarray:
    """beta / ||beta||_1 for beta log-uniform per objective on ``beta_range`` (fixed seed)."""
    lo, hi = beta_range
    b = np.exp(np.random.default_rng(0).uniform(np.log(lo), np.log(hi), (n, K)))
    return b / b.sum(axis=1, keepdims=True)


def save_ranker(model: nn.Module, out_dir, extra: dict | None = None):
    """Write ``config.json`` + ``model.safetensors`` atomically into ``out_dir``."""
    config = model.config_dict() | RANKER_FORMAT | (extra or {})
    # file by file, not by swapping the folder: a training run's folder also
    # holds its checkpoint and logs. config.json comes last and marks a
    # complete model.
    out_dir = Path(out_dir)
    with atomic_file(out_dir / "model.safetensors") as f:
        f.write(safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}))
    write_json(out_dir / "config.json", config)


def build_ranker(config: dict) -> nn.Module:
    schema = Schema.from_dict(config["schema"])
    if config["kind"] == "base":
        return BaseRanker(schema, ScorerConfig(**config["scorer"]))
    if config["kind"] == "conditioned":
        base = build_ranker(config["base"])
        return ConditionedRanker(
            base,
            schema,
            ScorerConfig(**config["scorer"]),
            config["parametrisation"],
            config["beta"],
            config["alpha"],
            config["method"],
            tuple(config["beta_range"]),
        )
    raise ValueError(f"unknown ranker kind {config['kind']!r}")


def load_ranker(model_dir) -> nn.Module:
    """Load a ranker folder written by ``save_ranker`` (eval mode)."""
    model_dir = Path(model_dir)
    cfg_path, weights = model_dir / "config.json", model_dir / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{model_dir} is not a model folder (needs config.json and model.safetensors)")
    try:
        config = json.loads(cfg_path.read_text())
    except ValueError as exc:
        raise ValueError(f"{cfg_path}: not valid JSON ({exc})") from None
    check_format(config, RANKER_FORMAT, cfg_path)
    try:
        model = build_ranker(config)
    except (KeyError, TypeError) as exc:
        raise ValueError(
            f"{cfg_path}: incomplete or inconsistent ranker config ({type(exc).__name__}: {exc})"
        ) from None
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for a truncated or foreign file
        raise ValueError(f"{weights}: not a readable safetensors file ({exc})") from None
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"{weights} does not match {cfg_path.name} ({first})") from None
    return model.eval()


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
