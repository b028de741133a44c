import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MSLR_SAMPLE = SHARED / "mslr-sample" / "train.txt"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """Every test gets its own parse cache: no test sees another's cached arrays."""
    monkeypatch.setenv("COSDPO_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def tiny_fold(tmp_path_factory):
    from cosdpo.data.synthetic import write_fold

    return write_fold(tmp_path_factory.mktemp("tiny") / "fold", n_queries=60, seed=3, mean_size=10, max_size=20)


TINY = dict(d_model=16, n_heads=2, n_layers=1, progress=False, min_steps=0)


@pytest.fixture(scope="session")
def tiny_base(tiny_fold, tmp_path_factory):
    from cosdpo.training.ltr import BaseConfig, train_base

    os.environ.setdefault("COSDPO_CACHE", str(tmp_path_factory.mktemp("cache-session")))
    out = tmp_path_factory.mktemp("base") / "base"
    train_base(tiny_fold, out, BaseConfig(epochs=3, batch_size=8, **TINY))
    return out


def requires_shared(path=MSLR_SAMPLE):
    return pytest.mark.skipif(not Path(path).exists(), reason=f"{path} not present")


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory):
    """A saved tiny random Llama folder (vocab 300, tokenizer with a chat template)."""
    pytest.importorskip("transformers")
    from tests.tiny_llm import save_tiny_llm

    return save_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory):
    from tests.tiny_llm import write_pairs

    return write_pairs(tmp_path_factory.mktemp("pairs"))
