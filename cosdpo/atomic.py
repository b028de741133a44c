"""Crash-safe writes (a reader sees the old content or the new, never half), and format stamps.

Everything the project writes that a user would miss after a crash (model
folders, checkpoints, caches, result JSON) goes through here: write beside
the target, flush, then rename over it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

# tempfile makes its files 0600 and its folders 0700; the finished ones get what open() and mkdir() would
# have given (0666 / 0777 less the umask), or a team's shared model and result folders would lock out
# everyone but their writer
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE, DIR_MODE = 0o666 & ~_UMASK, 0o777 & ~_UMASK


@contextmanager
def atomic_dir(target):
    """Yield a fresh temporary folder; on success it replaces ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    os.chmod(tmp, DIR_MODE)
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
        os.chmod(tmp, FILE_MODE)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def clean_partial_writes(folder) -> list[str]:
    """Remove what interrupted writes left in ``folder`` (the temporaries of ``atomic_dir`` and
    ``atomic_file``; a completed write renamed its own away). The ``.NAME.old`` folder a crash mid-swap
    may leave is kept: ``recover_dir`` reads it."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in [*folder.glob(".*.tmp-*"), *folder.glob(".*.tmp")]:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed


def _finite(obj, where: str, found: list):
    """``obj`` with every NaN or infinite float replaced by None, the places listed in ``found``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        found.append(where or "(top)")
        return None
    if isinstance(obj, dict):
        return {k: _finite(v, f"{where}.{k}" if where else str(k), found) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v, f"{where}[{i}]", found) for i, v in enumerate(obj)]
    return obj


def write_json(target, obj) -> None:
    """Valid JSON always: a NaN or infinity (which ``json`` would write as the non-JSON ``NaN``) becomes
    null, and a top-level ``null_values`` entry says where and why."""
    found: list = []
    obj = _finite(obj, "", found)
    if found and isinstance(obj, dict):
        obj["null_values"] = {"where": found[:50], "why": "the value was NaN or infinite (undefined)"}
    with atomic_file(target, "w") as f:
        json.dump(obj, f, indent=2, allow_nan=False)
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
