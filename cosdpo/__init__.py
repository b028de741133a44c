"""cosdpo: conditioned one-shot multi-objective fine-tuning (COS-DPO).

One model, conditioned on a weight vector w, serves every trade-off between
auxiliary objectives; choose w at inference time instead of retraining.
"""

from .data import DataError, RankingSet, Schema, load_split, make_schema, read_letor, write_fold
from .evaluation.front import ranker_front
from .evaluation.metrics import hypervolume, ndcg_per_group
from .simplex import check_simplex, weight_grid
from .evaluation.plot import plot_fronts
from .generation import generate
from .models.llm import load_policy
from .models.ranker import BaseRanker, ConditionedRanker, load_ranker, save_ranker
from .serving import rank_items, score_items
from .training.loop import TrainConfig
from .training.llm import LLMConfig, finetune_llm, write_front
from .training.ltr import BaseConfig, FinetuneConfig, finetune, train_base

__version__ = "0.1.0"

__all__ = [
    "BaseConfig", "BaseRanker", "ConditionedRanker", "DataError", "FinetuneConfig", "LLMConfig", "RankingSet",
    "Schema", "TrainConfig", "finetune", "finetune_llm", "generate", "load_policy", "write_front", "hypervolume", "load_ranker", "load_split", "make_schema", "ndcg_per_group",
    "plot_fronts", "rank_items", "ranker_front", "read_letor", "save_ranker", "score_items", "train_base",
    "weight_grid", "write_fold",
]
