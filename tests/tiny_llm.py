"""A tiny random Llama and a byte-level BPE tokenizer built in memory, for fast LLM tests."""

import json
import random

import torch

CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WORDS = "hello world how are you the cat sat on mat short answer please dog ran far away".split()


def make_tokenizer(vocab: int = 300):
    import tokenizers
    import transformers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        ["hello world how are you", "the cat sat on the mat", "short answer please", "the dog ran far away"] * 20,
        trainers.BpeTrainer(
            vocab_size=vocab,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>"],
        ),
    )
    t = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    t.chat_template = CHAT
    return t


def tiny_llama_config(tokenizer, **kw):
    import transformers

    return transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **kw,
    )


def make_llama(tokenizer, seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(tiny_llama_config(tokenizer)).eval()


def save_tiny_reward_model(folder, seed: int = 0):
    """A tiny random sequence-classification model (one score per text), as reward models are saved."""
    import transformers

    torch.manual_seed(seed)
    tok = make_tokenizer()
    transformers.LlamaForSequenceClassification(tiny_llama_config(tok, num_labels=1)).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def save_tiny_llm(folder, seed: int = 0):
    tok = make_tokenizer()
    make_llama(tok, seed).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def write_pairs(folder, n: int = 40, seed: int = 0) -> str:
    """Two conflicting objectives as jsonl files: 'short' prefers the shorter response,
    'cat' the one that mentions a cat (and cat responses are the longer ones)."""
    rng = random.Random(seed)
    files = {}
    for obj in ("short", "cat"):
        rows = []
        for i in range(n):
            prompt = " ".join(rng.choice(WORDS) for _ in range(3)) + f" {i}"
            short = " ".join(rng.choice(WORDS[:5]) for _ in range(2))
            cat = "the cat sat on the mat " + " ".join(rng.choice(WORDS) for _ in range(4))
            chosen, rejected = (short, cat) if obj == "short" else (cat, short)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        path = folder / f"{obj}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files[obj] = path
    return ",".join(f"{o}={p}" for o, p in files.items())


def save_tiny_gpt2(folder, seed: int = 0):
    """A tiny random GPT-2 whose tokenizer has no chat template, as GPT-2's has none."""
    import transformers

    tok = make_tokenizer()
    tok.chat_template = None
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=len(tok),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=4096,  # PKU responses run to 1,000 characters, about a token each with this tokenizer
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    transformers.GPT2LMHeadModel(cfg).eval().save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


# the paper's one-w-per-step, shared-LoRA setting: the oracles below are written for it (the defaults,
# per-pair w and the w-mixed LoRA, have tests of their own)
FAST = dict(
    batch_size=8,
    held_out=0.25,
    lora_rank=4,
    prompt_tokens=2,
    progress=False,
    lr=1e-2,
    weight_sampling="step",
    lora_mix=False,
    prompt_mask="linear",
    prompt_lr=0.0,
)


def cfg_for(model_dir, **kw):
    from cosdpo.training.llm import LLMConfig

    return LLMConfig(model=str(model_dir), **(FAST | kw))


def adapter_state(policy):
    return {k: v.detach().clone() for k, v in policy.named_parameters() if v.requires_grad}


def quiet(*_):
    pass
