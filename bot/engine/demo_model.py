"""Build the tiny demo model that the local engine serves when no real model can be had.

This file runs inside the engine's own virtual environment (it imports torch,
transformers and tokenizers, which Parley itself never imports): `bot.engine.launcher`
calls it as a script. The result is a Llama-shaped model with random weights and
a character-level tokenizer built here from text that ships with Python, plus a chat
template. Its answers are random characters; it exists so that every part of
the serving path (chat templates, streaming, prefix caching, structured output)
runs for real on a machine with no model download.

Why one token per character: a real model's answer, sent back as history in the
next turn, tokenizes to the tokens it was generated as, so the next prompt hits
the prefix cache through the answer. Random tokens from a byte-level BPE almost
never re-tokenize the same way (measured: they diverge within the first ~6
tokens), which would make every multi-turn cache measurement look worse than
any real model; whole words round-trip but cannot spell a structured-output
label that is not in the vocabulary. Single characters do both.
"""

from __future__ import annotations

import json
import random
import sys
import sysconfig
from pathlib import Path

VERSION = "3"  # bump when the recipe changes: cached builds are rebuilt
VOCAB_SIZE = 2048  # the most frequent characters of the corpus
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _corpus(limit_bytes: int = 12_000_000) -> list[str]:
    """English training text that every Python install has: the language reference's
    prose (pydoc_data/topics.py), then the stdlib's sources and docstrings."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts, size = [], 0
    for path in [stdlib / "pydoc_data" / "topics.py", *sorted(stdlib.glob("*.py"))]:
        text = path.read_text(encoding="utf-8", errors="ignore")
        texts.append(text)
        size += len(text)
        if size >= limit_bytes:
            break
    return texts


def build(out: Path, seed: int = 0) -> None:
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    random.seed(seed)
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)

    chars = Tokenizer(models.WordLevel(unk_token="<unk>"))
    chars.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    chars.decoder = decoders.Fuse()
    trainer = trainers.WordLevelTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL)
    chars.train_from_iterator(_corpus(), trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=chars,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="<pad>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>", "</s>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)

    # head_dim 64 is one of the sizes the CPU attention kernels support.
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id})
    )
    (out / "PARLEY_DEMO_MODEL").write_text(VERSION)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: demo_model.py OUTPUT_DIR")
    build(Path(sys.argv[1]))
