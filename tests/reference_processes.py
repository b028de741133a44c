"""Run by tests/test_llm.py under ``accelerate launch``: the work split across processes.

    python tests/reference_processes.py MODEL_DIR PAIRS OUT FOLD BASE

Writes OUT/rank{R}.json: the sequences this process scored itself in the reference pass and in an LLM
validation, the ranking groups it scored in a ranker validation, and the values each ends with.
OUT/rank{R}.exit says whether the process group was closed before the interpreter shut down.
"""

import atexit
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

import cosdpo.evaluation.preference as preference
import cosdpo.training.reference as reference
from cosdpo.data import RankingSet, make_schema
from cosdpo.evaluation.front import ranker_front, score_base
from cosdpo.models.llm import load_base
from cosdpo.models.ranker import ConditionedRanker, ScorerConfig, load_ranker
from cosdpo.training.llm import LLMConfig, build_policy, load_split
from cosdpo.training.loop import make_accelerator

model_dir, pairs, out, fold, base_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4], sys.argv[5]


def group_left_at_exit():  # registered first, so it runs after every exit handler the library adds
    rank = os.environ.get("RANK", "0")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.exit").write_text(str(not torch.distributed.is_initialized()))


atexit.register(group_left_at_exit)
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
reference.sequence_scores = real
reference_here = len(counted)

# LLM validation: every sequence at two w (the reference as well, for the pairs' validation)
counted.clear()
tally = []
real_pad = type(data).pad


def counting_pad(self, ids, device=None):
    tally.extend(ids)
    return real_pad(self, ids, device)


type(data).pad = counting_pad
vali_scores = [
    preference.sequence_scores(
        policy, data, torch.eye(len(objectives))[j], max_tokens=cfg.max_tokens, accelerator=acc
    ).tolist()
    for j in range(len(objectives))
]
type(data).pad = real_pad

# ranking validation: the base's and the conditioned model's scores of a whole split
ranker = load_ranker(base_dir)
schema = make_schema(136, ["quality1", "quality2"])
vali = RankingSet.load(fold, "vali", schema)
groups_here = []
real_batch = RankingSet.batch


def counting_batch(self, groups, device=None):
    groups_here.extend(int(g) for g in groups)
    return real_batch(self, groups, device)


RankingSet.batch = counting_batch
torch.manual_seed(0)
conditioned = ConditionedRanker(ranker, schema, ScorerConfig(d_model=16, n_heads=2, n_layers=1)).eval()
base_scores = score_base(ranker, vali, max_items=60, accelerator=acc)  # small batches: several to share
front = ranker_front(conditioned, vali, [[1.0, 0.0], [0.5, 0.5]], max_items=60, base=base_scores, accelerator=acc)
RankingSet.batch = real_batch

out.mkdir(parents=True, exist_ok=True)
(out / f"rank{acc.process_index}.json").write_text(
    json.dumps(
        {
            "scored_here": reference_here,
            "total": total,
            "sequences": len(data.sequences),
            "ref": data.ref.tolist(),
            "vali_sequences_here": len(tally),
            "vali_scores": vali_scores,
            "ranking_groups_here": len(groups_here),
            "ranking_groups": len(vali),
            "base_scores": base_scores.tolist(),
            "hypervolume": front["hypervolume"],
        }
    )
)
assert not np.isnan(data.ref).any()
