"""Evaluation split over the processes of a distributed run.

Validation runs on every process at the same point of training. Rather
than each process scoring everything, process r scores every N-th batch,
and one all-reduce sums the per-process arrays: the shares are disjoint
and zero elsewhere, so the sum is each value exactly, on every process.
"""

from __future__ import annotations

import numpy as np
import torch


def my_share(batches: list, accelerator) -> list:
    """The batches this process scores (all of them without an accelerator or with one process)."""
    if accelerator is None or accelerator.num_processes == 1:
        return batches
    return batches[accelerator.process_index :: accelerator.num_processes]


def gather_shares(values: np.ndarray, accelerator) -> np.ndarray:
    """Every process's share combined (each process filled its own entries and left the rest at 0)."""
    if accelerator is None or accelerator.num_processes == 1:
        return values
    summed = accelerator.reduce(torch.from_numpy(np.ascontiguousarray(values)).to(accelerator.device), "sum")
    return summed.cpu().numpy().astype(values.dtype, copy=False)
