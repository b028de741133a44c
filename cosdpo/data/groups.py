"""Query groups as flat arrays plus offsets, and padded batches of them.

A ``RankingSet`` holds one split with the schema applied: model inputs, the
main label and the auxiliary grades per item, concatenated over groups.
Batches are built by index, padded to the longest group of the batch, and
bucketed by length so that little compute goes to padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .letor import DataError, LetorFile, load_split
from .objectives import Schema


def _columns(X: np.ndarray, inputs) -> np.ndarray:
    """The model's input columns (1-based ``inputs``) of X as float32. A run of adjacent columns (MSLR's
    1..131) is a view, so a memory-mapped matrix stays on disk until batches read their rows."""
    cols = np.asarray(inputs) - 1
    if X.dtype == np.float32 and len(cols) and np.array_equal(cols, np.arange(cols[0], cols[0] + len(cols))):
        return X[:, cols[0] : cols[0] + len(cols)]
    return np.ascontiguousarray(X[:, cols], dtype=np.float32)


@dataclass
class RankingSet:
    features: np.ndarray  # (n_items, F_in) float32
    main: np.ndarray  # (n_items,) float32 relevance labels
    aux: np.ndarray  # (n_items, K) float32 grades
    offsets: np.ndarray  # (n_groups + 1,) int64
    qids: np.ndarray  # (n_groups,)
    objectives: list[str]
    ref: np.ndarray | None = None  # (n_items,) frozen base scores, filled by the trainer
    margin: np.ndarray | None = None  # (n_items,) MO-DPO: sum_{j>1} w_j r_j of the single-objective models

    def __len__(self) -> int:
        return len(self.qids)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_letor(cls, lf: LetorFile, schema: Schema) -> RankingSet:
        if lf.n_features != schema.n_features:
            raise DataError(lf.path, f"has {lf.n_features} features but the model's schema expects {schema.n_features}")
        qid = np.asarray(lf.qid)
        starts = np.flatnonzero(np.r_[True, qid[1:] != qid[:-1]])
        if len(np.unique(qid[starts])) == len(starts):  # every query's rows together, as LETOR files have them
            X, order_q, sizes = lf.X, qid[starts], np.diff(np.r_[starts, len(qid)])
            labels = lf.y
        else:  # a query's rows interleaved with others': gather them, queries in order of first appearance
            uniq, first, inverse = np.unique(qid, return_index=True, return_inverse=True)
            by_first = np.argsort(first, kind="stable")
            order_q = uniq[by_first]
            rank = np.argsort(by_first)[inverse]  # group index of every row, in file order of queries
            order = np.argsort(rank, kind="stable")
            X, labels = lf.X[order], lf.y[order]
            sizes = np.bincount(rank, minlength=len(order_q))
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        aux = (
            np.stack([o.grades(X, schema.max_grade) for o in schema.objectives], axis=1)
            if schema.objectives
            else np.zeros((len(X), 0), np.float32)
        )
        return cls(
            _columns(X, schema.inputs),
            np.asarray(labels, np.float32),
            aux.astype(np.float32),
            offsets,
            order_q,
            schema.objective_names,
        )

    def check_learnable(self, source, labels: str = "main"):
        """Refuse a training split in which no query has two different labels (for ``labels="main"``,
        the relevance label; else every objective's grades): it holds nothing to learn, and its
        validation NDCG is undefined."""
        columns = {"relevance label": self.main} if labels == "main" else dict(zip(self.objectives, self.aux.T))
        for name, values in columns.items():
            lo = np.minimum.reduceat(values, self.offsets[:-1]) if len(self) else values
            hi = np.maximum.reduceat(values, self.offsets[:-1]) if len(self) else values
            if not np.any(hi > lo):
                raise DataError(source, f"no training query has two different values of its {name}: nothing to learn")
        return self

    @classmethod
    def load(cls, path, split: str, schema: Schema, seed: int = 0) -> RankingSet:
        lf = load_split(path, split, seed=seed, n_features=schema.n_features, max_label=schema.max_label)
        return cls.from_letor(lf, schema)

    def item_index(self, groups):
        """Item index (B, L) of each padded slot, and the mask of real slots."""
        groups = np.asarray(groups, dtype=np.int64)
        starts, sizes = self.offsets[groups], self.sizes[groups]
        col = np.arange(int(sizes.max()) if len(groups) else 0)
        mask = col[None, :] < sizes[:, None]
        return np.where(mask, starts[:, None] + col[None, :], 0), mask

    def batch(self, groups, device=None) -> dict[str, torch.Tensor]:
        """Padded tensors for the given group indices.

        ``x`` (B, L, F), ``mask`` (B, L), ``main`` (B, L), ``aux`` (B, L, K),
        ``group`` (B,) the group indices, and ``ref`` (B, L) when base scores are attached.
        """
        idx, mask = self.item_index(groups)
        out = {
            "group": torch.as_tensor(np.asarray(groups, dtype=np.int64)),
            "x": torch.from_numpy(self.features[idx] * mask[..., None]),
            "mask": torch.from_numpy(mask),
            "main": torch.from_numpy(self.main[idx] * mask),
            "aux": torch.from_numpy(self.aux[idx] * mask[..., None]),
        }
        for name in ("ref", "margin"):
            if getattr(self, name) is not None:
                out[name] = torch.from_numpy(getattr(self, name)[idx] * mask)
        if device is not None:
            out = {k: v.to(device) for k, v in out.items()}
        return out

    def epoch_batches(self, batch_size: int, seed: int, epoch: int, bucket: int = 50) -> list[np.ndarray]:
        """Deterministic batches for one epoch, bucketed by group length.

        Groups are shuffled with (seed, epoch), cut into chunks of
        ``bucket`` batches, sorted by size within a chunk, batched, and the
        batches shuffled again: batches hold groups of similar length
        (little padding) while the epoch stays random. Resuming re-creates
        exactly the same order.
        """
        rng = np.random.default_rng([seed, epoch])
        perm = rng.permutation(len(self))
        chunk = batch_size * bucket
        batches = []
        for i in range(0, len(perm), chunk):
            part = perm[i : i + chunk]
            part = part[np.argsort(self.sizes[part], kind="stable")]
            batches += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def length_buckets(self, groups, ratio: float = 1.5, min_groups: int = 4) -> list[np.ndarray]:
        """One training batch's groups in runs of similar length, to be padded and run separately.

        Why: a batch is padded to its longest group, and attention costs the
        square of the padded length. On MSLR's lists (50 to 300 documents in
        one batch is common) one padded batch computes 2.4x the positions and
        4.6x the attention of its real documents. Groups are sorted by size
        and a run closes when the next group is over ``ratio`` times its
        first (and the run has ``min_groups``); the step's losses are sums
        over groups, so the runs together give exactly the batch's losses.
        """
        groups = np.asarray(groups)
        order = groups[np.argsort(self.sizes[groups], kind="stable")]
        sizes = self.sizes[order]
        runs, start = [], 0
        for i in range(1, len(order)):
            if sizes[i] > ratio * sizes[start] and i - start >= min_groups:
                runs.append(order[start:i])
                start = i
        return runs + [order[start:]] if len(order) else runs

    def eval_batches(self, max_items: int = 16384) -> list[np.ndarray]:
        """Fixed inference batches in length order, each at most ``max_items`` padded slots.

        Cutting by padded size, not by group count, keeps short groups out of
        long groups' padding: one batch of 256 groups padded to the longest
        made validation cost as much as training.
        """
        batches, current = [], []
        for g in np.argsort(self.sizes, kind="stable"):
            if current and (len(current) + 1) * self.sizes[g] > max_items:
                batches.append(np.array(current))
                current = []
            current.append(g)
        return batches + [np.array(current)] if current else batches

    def pad(self, flat: np.ndarray, fill: float = 0.0):
        """Per-item values (n_items, ...) -> (n_groups, max_size, ...) and the mask."""
        idx, mask = self.item_index(np.arange(len(self)))
        out = flat[idx]
        out[~mask] = fill
        return out, mask
