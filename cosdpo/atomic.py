"""Crash-safe writes (a reader sees the old content or the new, never half), and format stamps.

Everything the project writes that a user would miss after a crash (model
folders, checkpoints, caches, result JSON) goes through here: write beside
the target, flush, then rename over it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_dir(target):
    """Yield a fresh temporary folder; on success it replaces ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        yield tmp
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_dir(target) -> Path | None:
    """The folder at ``target``, or the previous one if a crash hit mid-swap."""
    target = Path(target)
    if target.is_dir():
        return target
    old = target.with_name(f".{target.name}.old")
    return old if old.is_dir() else None


@contextmanager
def atomic_file(target, mode: str = "wb"):
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(target, obj) -> None:
    with atomic_file(target, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def check_format(saved: dict, expected: dict, path) -> None:
    """A saved file carries ``{"format": ..., "version": ...}``; refuse another format or an unknown version.

    Why: a folder from a newer cosdpo (or another tool) must fail with one
    line naming the file, not later as a missing key deep in loading.
    """
    if not isinstance(saved, dict) or saved.get("format") != expected["format"]:
        raise ValueError(
            f"{path} is not a {expected['format']} file (its format is "
            f"{saved.get('format') if isinstance(saved, dict) else None!r})"
        )
    if saved.get("version") != expected["version"]:
        raise ValueError(
            f"{path} has {expected['format']} version {saved.get('version')!r}; this cosdpo reads "
            f"version {expected['version']}"
        )
