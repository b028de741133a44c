"""The end-to-end demo: synthetic data -> base -> Weight-COS-DPO -> front."""

from __future__ import annotations

import time
from pathlib import Path

from .config import from_dict, load_recipe
from .data.synthetic import write_fold
from .evaluation.front import front_job
from .training.ltr import BaseConfig, FinetuneConfig, finetune, train_base

MARKER = ".cosdpo-demo"


def run_demo(
    out="cosdpo-demo",
    queries: int = 1000,
    seed: int = 0,
    base_epochs: int = 20,
    finetune_epochs: int = 20,
    progress: bool = True,
) -> dict:
    """Run the whole pipeline into ``out`` (re-running replaces an earlier demo there)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise FileExistsError(f"{out} exists and is not a cosdpo demo folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `cosdpo demo`; safe to delete\n")
    t0 = time.perf_counter()
    data = write_fold(out / "data", queries, seed, overwrite=True)
    _, base_metrics = train_base(
        data, out / "base", BaseConfig(epochs=base_epochs, seed=seed, progress=progress), overwrite=True
    )
    recipe = {k: v for k, v in load_recipe("ranking-demo").items() if k not in ("command", "description")}
    cfg = from_dict(FinetuneConfig, recipe | {"epochs": finetune_epochs, "seed": seed, "progress": progress})
    _, ft_metrics = finetune(data, out / "base", out / "wcos", cfg, overwrite=True)
    front = front_job(out / "wcos", data, out / "front", split="test")
    return {
        "front": front,
        "base_train_seconds": base_metrics["train_seconds"],
        "finetune_train_seconds": ft_metrics["train_seconds"],
        "total_seconds": time.perf_counter() - t0,
        "paths": {
            "data": str(data),
            "base": str(out / "base"),
            "model": str(out / "wcos"),
            "front_json": str(out / "front" / "front.json"),
            "front_png": str(out / "front" / "front.png"),
        },
    }
