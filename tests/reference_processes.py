"""Run by tests/test_llm.py under ``accelerate launch``: the reference pass split across processes.

    python tests/reference_processes.py MODEL_DIR PAIRS OUT

Writes OUT/rank{R}.json: the sequences this process scored itself, and the reference log-probs it ends with.
"""

import json
import sys
from pathlib import Path

import numpy as np

import cosdpo.training.reference as reference
from cosdpo.models.llm import load_base
from cosdpo.training.llm import LLMConfig, build_policy, load_split
from cosdpo.training.loop import make_accelerator

model_dir, pairs, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
acc = make_accelerator()
cfg = LLMConfig(
    model=model_dir, batch_size=8, held_out=0.25, lora_rank=4, prompt_tokens=2, progress=False, max_tokens=256
)
base, tok = load_base(model_dir)
data, objectives, _ = load_split(pairs, tok, cfg, None, "train")
policy = build_policy(base, cfg, len(objectives))
counted = []
real = reference.sequence_scores


def counting(*args, batches=None, **kwargs):
    counted.extend(i for b in batches for i in b)
    return real(*args, batches=batches, **kwargs)


reference.sequence_scores = counting
total = reference.reference_logprobs(policy, {"train": data}, cfg, None, False, accelerator=acc)
out.mkdir(parents=True, exist_ok=True)
(out / f"rank{acc.process_index}.json").write_text(
    json.dumps(
        {"scored_here": len(counted), "total": total, "sequences": len(data.sequences), "ref": data.ref.tolist()}
    )
)
assert not np.isnan(data.ref).any()
