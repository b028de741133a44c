"""Which columns of a LETOR file are model inputs, and which are objectives.

MSLR-WEB10K/30K files have 136 features; 1..131 are inputs and 132..136 are
the auxiliary objectives, which have names. Other LETOR files name an
objective by its feature index (``f44``), and that feature leaves the input.
The main objective is always the relevance label.

Raw auxiliary values (click counts up to 1e6, dwell times, quality scores
1..254) are not grades. A *grade transform* maps them to 0..max_grade; the
grades serve both NDCG (gain 2^g - 1) and, through the label transform T of
the loss (softmax or l1), the fine-tuning targets. Specs:

- ``logB`` (e.g. ``log4``): g = min(G, ceil(log_B(1 + v))) for v >= 0, so 0
  stays 0 and every doubling-ish step of a heavy tail gains a grade;
- ``linear:LO:HI``: G+1 equal-width bins over [LO, HI], clipped;
- ``identity``: the value rounded and clipped to 0..G (already a grade).

Defaults, chosen from MSLR's value ranges: counts ``log8`` (1..7 clicks -> 1,
512+ -> 4), times ``log4``, quality scores ``log4`` (median ~6 -> 2,
150+ -> 4).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np

MSLR_N_FEATURES = 136
MSLR_INPUTS = tuple(range(1, 132))
MSLR_OBJECTIVES = {
    "quality1": (132, "score"),
    "quality2": (133, "score"),
    "query_url_clicks": (134, "count"),
    "url_clicks": (135, "count"),
    "dwell_time": (136, "time"),
}
DEFAULT_GRADE = {"score": "log4", "count": "log8", "time": "log4", "feature": "log4"}


def apply_grade_transform(spec: str, values: np.ndarray, max_grade: int = 4) -> np.ndarray:
    """Map raw objective values to grades in 0..max_grade (float32)."""
    check_grade_spec(spec)
    v = np.asarray(values, dtype=np.float64)
    if spec == "identity":
        g = np.rint(v)
    elif spec.startswith("log"):
        base = float(spec[3:])
        g = np.ceil(np.log1p(np.clip(v, 0.0, None)) / math.log(base) - 1e-9)
    else:
        _, lo, hi = spec.split(":")
        lo, hi = float(lo), float(hi)
        g = np.floor((v - lo) / (hi - lo) * (max_grade + 1))
    return np.clip(g, 0, max_grade).astype(np.float32)


def check_grade_spec(spec: str) -> str:
    if spec == "identity":
        return spec
    m = re.fullmatch(r"log(\d+(?:\.\d+)?)", spec)
    if m and float(m.group(1)) > 1:
        return spec
    m = re.fullmatch(r"linear:(-?[\d.e+-]+):(-?[\d.e+-]+)", spec)
    if m:
        try:
            if float(m.group(2)) > float(m.group(1)):
                return spec
        except ValueError:
            pass
    raise ValueError(f"bad grade transform {spec!r}: use logB (B > 1, e.g. log4), linear:LO:HI (HI > LO) or identity")


@dataclass(frozen=True)
class Objective:
    name: str
    feature: int  # 1-based LETOR feature index
    grade: str

    def grades(self, X: np.ndarray, max_grade: int = 4) -> np.ndarray:
        return apply_grade_transform(self.grade, X[:, self.feature - 1], max_grade)


@dataclass
class Schema:
    """Inputs and objectives of a LETOR dataset; saved with every model."""

    n_features: int
    inputs: list[int]
    objectives: list[Objective] = field(default_factory=list)
    max_label: int = 4
    max_grade: int = 4

    def __post_init__(self):
        self.objectives = [o if isinstance(o, Objective) else Objective(**o) for o in self.objectives]
        bad = [i for i in self.inputs if not 1 <= i <= self.n_features]
        if bad:
            raise ValueError(f"input features {bad} are outside 1..{self.n_features}")
        clash = [o.name for o in self.objectives if o.feature in set(self.inputs)]
        if clash:
            raise ValueError(f"objectives {clash} are also model inputs; an objective's feature must leave the input")
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives named twice: {names}")

    @property
    def objective_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Schema:
        return cls(**d)

    def with_objectives(self, objectives: list[Objective]) -> Schema:
        return Schema(self.n_features, list(self.inputs), objectives, self.max_label, self.max_grade)


def parse_objective(name: str, n_features: int, grade: str | None = None) -> Objective:
    """An objective by MSLR name (136-feature files) or by feature index ``fN``."""
    name = name.strip()
    if name in MSLR_OBJECTIVES:
        if n_features != MSLR_N_FEATURES:
            raise ValueError(
                f"objective {name!r} is an MSLR name, but the data has {n_features} features, not 136; "
                f"name objectives by feature index (e.g. f{n_features})"
            )
        feature, kind = MSLR_OBJECTIVES[name]
    else:
        m = re.fullmatch(r"f(\d+)", name)
        if not m:
            raise ValueError(
                f"unknown objective {name!r}: use one of {sorted(MSLR_OBJECTIVES)} (MSLR files) "
                f"or a feature index such as f44"
            )
        feature, kind = int(m.group(1)), "feature"
        if not 1 <= feature <= n_features:
            raise ValueError(f"objective {name!r}: the data has features 1..{n_features}")
    return Objective(name, feature, check_grade_spec(grade or DEFAULT_GRADE[kind]))


def make_schema(n_features: int, objectives=(), grades: dict[str, str] | None = None, max_label: int = 4) -> Schema:
    """Schema for a file with ``n_features`` features and the chosen objectives.

    MSLR files keep inputs 1..131 whatever objectives are chosen (132..136
    are judgements, never inputs); other files lose exactly the objective
    features from their input.
    """
    grades = dict(grades or {})
    objs = [parse_objective(n, n_features, grades.pop(n.strip(), None)) for n in objectives]
    if grades:
        raise ValueError(f"grade transforms given for objectives that were not chosen: {sorted(grades)}")
    if n_features == MSLR_N_FEATURES:
        inputs = list(MSLR_INPUTS)
    else:
        used = {o.feature for o in objs}
        inputs = [i for i in range(1, n_features + 1) if i not in used]
    return Schema(n_features, inputs, objs, max_label)


def parse_grade_overrides(text: str | None) -> dict[str, str]:
    """``"url_clicks=log2,quality1=linear:0:255"`` -> dict."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        if "=" not in part:
            raise ValueError(f"bad --grades entry {part!r}: expected NAME=SPEC")
        k, v = part.split("=", 1)
        out[k.strip()] = check_grade_spec(v.strip())
    return out
