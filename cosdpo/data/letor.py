"""LETOR / SVMlight text files: parse, validate, cache, split by query.

Parsing is scikit-learn's ``load_svmlight_file`` (C speed, handles comments,
CRLF and trailing spaces); the qids are read beside it in linear time. It
reports bad input without a line number, so on any failure we re-read the
file in Python to name the line: the slow path runs only when something is
wrong.

Parsed arrays are cached as ``.npy`` files in a folder under
``$COSDPO_CACHE`` (default ``~/.cache/cosdpo``), keyed by the file's path,
size and modification time. A second load skips the parser and maps the
feature matrix from disk instead of reading it: an MSLR-WEB30K-sized fold
(3.7 million rows) loads in seconds, and only the pages a job touches come
into memory.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.datasets import load_svmlight_file

from ..atomic import atomic_dir

CACHE_VERSION = "3"  # 2: files checked for a last line end, one-based indices and MSLR's width; 3: .npy folders
MSLR_WIDTH = 136
FOLD_FILES = {"train": "train.txt", "vali": "vali.txt", "test": "test.txt"}
SPLITS = ("train", "vali", "test", "all")


class DataError(ValueError):
    """Bad input data; the message names the file and the line (or query)."""

    def __init__(self, path, message, line: int | None = None):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path, self.line = str(path), line


@dataclass
class LetorFile:
    path: str
    X: np.ndarray  # (n, F) float32
    y: np.ndarray  # (n,) float32
    qid: np.ndarray  # (n,) int64

    @property
    def n_features(self) -> int:
        return self.X.shape[1]

    def take_queries(self, qids: np.ndarray) -> LetorFile:
        rows = np.isin(self.qid, qids)
        return LetorFile(self.path, self.X[rows], self.y[rows], self.qid[rows])


def cache_dir() -> Path:
    return Path(os.environ.get("COSDPO_CACHE", Path.home() / ".cache" / "cosdpo")) / "letor"


def _cache_path(path: Path) -> Path:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{CACHE_VERSION}"
    return cache_dir() / hashlib.sha256(key.encode()).hexdigest()[:32]


def _data_lines(path: Path):
    """Yield (line_number, tokens) for every data line (comments stripped)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            body = raw.split(b"#", 1)[0].strip()
            if body:
                yield lineno, body.split()


def _line_of_row(path: Path, row: int) -> int | None:
    for i, (lineno, _) in enumerate(_data_lines(path)):
        if i == row:
            return lineno
    return None


def _first_malformed_line(path: Path):
    """Find the first line that is not ``label [qid:Q] idx:val ...`` with rising idx."""
    for lineno, tokens in _data_lines(path):
        try:
            float(tokens[0])
        except ValueError:
            return lineno, f"label {tokens[0].decode(errors='replace')!r} is not a number"
        prev = 0
        for tok in tokens[1:]:
            key, sep, val = tok.partition(b":")
            text = tok.decode(errors="replace")
            if not sep:
                return lineno, f"token {text!r} is not of the form index:value"
            if key == b"qid":
                if not val.lstrip(b"-").isdigit():
                    return lineno, f"qid {val.decode(errors='replace')!r} is not an integer"
                continue
            if not key.isdigit() or int(key) < 1:
                return lineno, f"feature index in {text!r} is not a positive integer"
            try:
                float(val)
            except ValueError:
                return lineno, f"feature value in {text!r} is not a number"
            if int(key) <= prev:
                return lineno, f"feature indices must rise along a line ({int(key)} after {prev})"
            prev = int(key)
    return None


def _check_complete(path: Path):
    """A file cut short (a copy or download that stopped mid-line) ends without a line end."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
            last = sum(1 for _ in open(path, "rb"))
            raise DataError(path, "the last line has no line end: the file looks cut short", last)


def _check_width(path: Path, X):
    """MSLR lines list all 136 features; a line with a feature beyond that is an error in the file, not a
    wider schema (which would turn the objectives 132..136 into model inputs)."""
    ends = np.diff(X.indptr) > 0
    last = np.zeros(X.shape[0], dtype=np.int64)
    last[ends] = X.indices[X.indptr[1:][ends] - 1] + 1
    if X.shape[1] > MSLR_WIDTH and np.median(last[ends]) == MSLR_WIDTH:
        row = int(np.flatnonzero(last > MSLR_WIDTH)[0])
        raise DataError(
            path,
            f"feature index {last[row]} is beyond the 136 features of the file's other lines",
            _line_of_row(path, row),
        )


# the qid of a data line: its second token (after the label), comments and blank lines aside
QID = re.compile(rb"^[ \t]*[^\s#]+[ \t]+qid:(-?\d+)", re.MULTILINE)


def _query_ids(path: Path) -> np.ndarray:
    """Every data line's qid, read in blocks of lines.

    Why not sklearn's ``query_id=True``: its parser grows the qid array by one
    copy per line, which is quadratic in the rows; on an MSLR-WEB30K training
    file (2.3 million rows) that alone ran for over half an hour.
    """
    found = []
    with open(path, "rb") as f:
        while block := f.readlines(1 << 24):
            found += QID.findall(b"".join(block))
    return np.array(found, dtype=np.int64)


def _parse(path: Path):
    _check_complete(path)
    try:
        # one-based, as LETOR is: sklearn's "auto" would read a whole file as zero-based on one "0:v"
        X, y = load_svmlight_file(str(path), dtype=np.float32, zero_based=False)
    except ValueError as exc:
        found = _first_malformed_line(path)
        if found:
            raise DataError(path, f"malformed line: {found[1]}", found[0]) from None
        raise DataError(path, f"could not parse: {exc}") from None
    n = X.shape[0]
    if n == 0:
        raise DataError(path, "no data rows (the file is empty or holds only comments)")
    qid = _query_ids(path)
    if len(qid) != n:
        found = _first_malformed_line(path)
        if found:
            raise DataError(path, f"malformed line: {found[1]}", found[0])
        for lineno, tokens in _data_lines(path):
            if not any(t.startswith(b"qid:") for t in tokens[1:]):
                raise DataError(path, "missing qid: every line needs 'qid:N' after the label", lineno)
        raise DataError(path, "missing qid on some lines")
    X = X.tocsr()
    X.sort_indices()
    _check_width(path, X)
    return X, y.astype(np.float32), qid.astype(np.int64)


def read_letor(path, n_features: int | None = None, max_label: int | None = 4, cache: bool = True) -> LetorFile:
    """Read and validate one LETOR/SVMlight file.

    Checks, each failing with file and line: malformed lines, missing qid,
    NaN/inf values, feature indices beyond ``n_features``, labels that are
    not integers in 0..``max_label`` (``None`` skips the label check).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file")
    cpath = _cache_path(path) if cache else None
    cached = _read_cache(cpath) if cpath is not None else None
    if cached is not None:
        X, y, qid = cached
    else:
        Xs, y, qid = _parse(path)
        bad = ~np.isfinite(Xs.data)
        if bad.any():
            row = int(np.searchsorted(Xs.indptr, np.flatnonzero(bad)[0], side="right") - 1)
            raise DataError(path, "a feature value is NaN or infinite", _line_of_row(path, row))
        X = Xs.toarray()
        del Xs
        if cpath is not None:
            _write_cache(path, cpath, X, y, qid)
    _check_labels(path, y, max_label)
    if n_features is not None and X.shape[1] > n_features:
        rows = np.flatnonzero(np.any(X[:, n_features:] != 0, axis=1))
        row = int(rows[0]) if len(rows) else 0
        raise DataError(
            path, f"feature index {X.shape[1]} is beyond the schema's {n_features} features", _line_of_row(path, row)
        )
    if n_features is not None and X.shape[1] < n_features:
        X = np.pad(X, ((0, 0), (0, n_features - X.shape[1])))
    return LetorFile(str(path), X, y, qid)


def _read_cache(cpath: Path):
    """(X, y, qid) memory-mapped from the cache, or None when absent or unreadable: a damaged cache
    costs a parse, never the run."""
    if not (cpath / "X.npy").exists():
        return None
    try:
        X, y, qid = (np.load(cpath / f"{name}.npy", mmap_mode="r") for name in ("X", "y", "qid"))
    except (OSError, ValueError):
        return None
    return (X, y, qid) if X.ndim == 2 and len(X) == len(y) == len(qid) else None


def _write_cache(path: Path, cpath: Path, X, y, qid):
    """Cache the parsed arrays; where that fails (a full disk, a read-only home), say so and go on."""
    try:
        with atomic_dir(cpath) as tmp:
            for name, values in (("X", X), ("y", y), ("qid", qid)):
                np.save(tmp / f"{name}.npy", values)
    except OSError as exc:
        warnings.warn(
            f"{path}: could not cache the parsed rows in {cpath.parent} ({exc.strerror or exc}); the next load "
            "parses the file again (COSDPO_CACHE names another cache folder)",
            stacklevel=3,
        )


def _check_labels(path: Path, y: np.ndarray, max_label: int | None):
    if not np.all(np.isfinite(y)):
        row = int(np.flatnonzero(~np.isfinite(y))[0])
        raise DataError(path, "the label is NaN or infinite", _line_of_row(path, row))
    if max_label is None:
        return
    bad = (y < 0) | (y > max_label) | (y != np.round(y))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            path, f"label {y[row]:g} is out of range: labels are integers 0..{max_label}", _line_of_row(path, row)
        )


def query_order(qid: np.ndarray) -> np.ndarray:
    """Unique qids in order of first appearance in the file."""
    uniq, first = np.unique(qid, return_index=True)
    return uniq[np.argsort(first)]


def split_queries(qid: np.ndarray, seed: int = 0, fractions=(0.6, 0.2, 0.2)) -> dict[str, np.ndarray]:
    """Seeded split of a single file's queries into train/vali/test."""
    queries = query_order(qid)
    if len(queries) < 3:
        raise ValueError(f"cannot split {len(queries)} queries into train/vali/test; give a Fold directory")
    perm = np.random.default_rng(seed).permutation(len(queries))
    n_train = max(1, int(round(fractions[0] * len(queries))))
    n_vali = max(1, int(round(fractions[1] * len(queries))))
    n_train = min(n_train, len(queries) - 2)
    parts = np.split(queries[perm], [n_train, n_train + n_vali])
    return dict(zip(("train", "vali", "test"), parts))


def load_split(path, split: str, seed: int = 0, n_features: int | None = None, max_label: int | None = 4):
    """One split of a dataset given as a Fold directory or a single file.

    A directory must hold train.txt, vali.txt and test.txt (MSLR's Fold
    layout). A single file is split 60/20/20 by query with ``seed``;
    ``split="all"`` takes the whole file (or, for a directory, all three).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    path = Path(path)
    if path.is_dir():
        missing = [f for f in FOLD_FILES.values() if not (path / f).is_file()]
        if missing:
            raise DataError(path, f"a Fold directory needs {', '.join(FOLD_FILES.values())}; missing {missing}")
        names = list(FOLD_FILES) if split == "all" else [split]
        parts = [read_letor(path / FOLD_FILES[s], n_features, max_label) for s in names]
        if len({p.n_features for p in parts}) > 1 and n_features is None:
            width = max(p.n_features for p in parts)
            parts = [read_letor(path / FOLD_FILES[s], width, max_label) for s in names]
        if len(parts) == 1:
            return parts[0]
        return LetorFile(str(path), *(np.concatenate(a) for a in zip(*[(p.X, p.y, p.qid) for p in parts])))
    whole = read_letor(path, n_features, max_label)
    if split == "all":
        return whole
    return whole.take_queries(split_queries(whole.qid, seed)[split])


def dataset_width(path) -> int:
    """Number of features of a dataset (the train file of a Fold directory)."""
    path = Path(path)
    first = path / FOLD_FILES["train"] if path.is_dir() else path
    return read_letor(first, max_label=None).n_features
