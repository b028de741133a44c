"""cosdpo: conditioned one-shot multi-objective fine-tuning (COS-DPO).

One model, conditioned on a weight vector w, serves every trade-off between
auxiliary objectives; choose w at inference time instead of retraining.
"""

from .config import load_recipe, recipes
from .data import DataError, RankingSet, Schema, load_split, make_schema, read_letor, write_fold
from .evaluation.front import ranker_front
from .evaluation.metrics import hypervolume, ndcg_per_group
from .evaluation.plot import plot_fronts
from .generation import generate
from .models.llm import load_policy
from .models.ranker import BaseRanker, ConditionedRanker, load_ranker, save_ranker
from .serving import rank_items, score_items
from .simplex import check_simplex, weight_grid
from .training.compare import CompareConfig, compare
from .training.llm import LLMConfig, finetune_llm, write_front
from .training.loop import TrainConfig
from .training.ltr import BaseConfig, FinetuneConfig, finetune, train_base

__version__ = "0.1.0"

__all__ = [
    "BaseConfig",
    "BaseRanker",
    "CompareConfig",
    "ConditionedRanker",
    "DataError",
    "FinetuneConfig",
    "LLMConfig",
    "RankingSet",
    "Schema",
    "TrainConfig",
    "check_simplex",
    "compare",
    "finetune",
    "finetune_llm",
    "generate",
    "hypervolume",
    "load_policy",
    "load_ranker",
    "load_recipe",
    "load_split",
    "make_schema",
    "ndcg_per_group",
    "plot_fronts",
    "rank_items",
    "ranker_front",
    "read_letor",
    "recipes",
    "save_ranker",
    "score_items",
    "train_base",
    "weight_grid",
    "write_fold",
    "write_front",
]
