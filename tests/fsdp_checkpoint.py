"""Run by tests/test_training.py under ``torch.distributed.run --nproc_per_node 2``: checkpoint helpers under FSDP.

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_checkpoint.py OUT

Shards a small model over two CPU processes with torch's FSDP2 (``fully_shard``), which Accelerate does
not offer on CPU. After a step, ``optimizer_state`` must hold the whole (unsharded) Adam state that one
unsharded process reaches; written by the main process and loaded into a fresh sharded model through
``load_optimizer_state`` by every process, as ``--resume`` does, the next step must equal the
uninterrupted run's. Writes OUT/rank{R}.json with the largest differences.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from cosdpo.training.checkpoint import _flatten_optimizer, _unflatten_optimizer, load_optimizer_state, optimizer_state

out = Path(sys.argv[1])
dist.init_process_group("gloo")
rank = dist.get_rank()
mesh = init_device_mesh("cpu", (2,))


def model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    m[0].bias.requires_grad_(False)  # a frozen part, as the base is
    return m


def sharded():
    m = model()
    fully_shard(m[0], mesh=mesh)
    fully_shard(m[2], mesh=mesh)
    fully_shard(m, mesh=mesh)
    return m, torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=0.1)


def step(m, opt, seed):
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(seed))
    opt.zero_grad()
    m(x).pow(2).sum().backward()
    opt.step()


ref = model()  # one unsharded process with the whole batch
ref_opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=0.1)
names = {id(p): n for n, p in ref.named_parameters()}
m, opt = sharded()
for s in (1, 2):
    step(ref, ref_opt, s)
    step(m, opt, s)
full = optimizer_state(m, opt)  # every process calls it; the main one receives the whole state
out.mkdir(parents=True, exist_ok=True)
if rank == 0:  # the main process writes, every process reads: as a checkpoint does
    tensors, meta = _flatten_optimizer(full)
    save_file(tensors, str(out / "optimizer.safetensors"))
    (out / "optimizer.json").write_text(json.dumps(meta))
dist.barrier()
restored = _unflatten_optimizer(
    load_file(str(out / "optimizer.safetensors")), json.loads((out / "optimizer.json").read_text())
)
state_diff = max(
    (restored["state"][names[id(p)]][k] - v).abs().max().item()
    for p, st in ref_opt.state.items()
    for k, v in st.items()
    if k != "step"
)
m2, opt2 = sharded()
m2.load_state_dict(m.state_dict())
load_optimizer_state(m2, opt2, restored)
step(ref, ref_opt, 3)
step(m, opt, 3)
step(m2, opt2, 3)
whole = {n: p.full_tensor() for n, p in m.named_parameters()}
resumed = {n: p.full_tensor() for n, p in m2.named_parameters()}
(out / f"rank{rank}.json").write_text(
    json.dumps(
        {
            "names": sorted(restored["state"]),
            "state_vs_unsharded": state_diff,
            "resumed_vs_continued": max((whole[n] - resumed[n]).abs().max().item() for n in whole),
            "continued_vs_unsharded": max((whole[n] - p).abs().max().item() for n, p in ref.named_parameters()),
            "moved": max((p - model().state_dict()[n]).abs().max().item() for n, p in ref.named_parameters()),
        }
    )
)
dist.destroy_process_group()
