"""Data: LETOR files -> validated arrays -> query groups -> padded batches."""

from .groups import RankingSet
from .letor import DataError, LetorFile, load_split, read_letor, split_queries
from .objectives import Objective, Schema, apply_grade_transform, make_schema, parse_grade_overrides
from .synthetic import generate, write_fold

__all__ = [
    "DataError",
    "LetorFile",
    "Objective",
    "RankingSet",
    "Schema",
    "apply_grade_transform",
    "generate",
    "load_split",
    "make_schema",
    "parse_grade_overrides",
    "read_letor",
    "split_queries",
    "write_fold",
]
