"""A local byte-level BPE tokenizer, trained on the prose awqd ships, for models built without a model hub."""

import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from awqd.errors import InvalidArgument

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD)  # ids 0..3, the order Llama-2's tokenizer uses for unk, bos, eos
MIN_VOCAB_SIZE = 512  # the 256 byte-level symbols, the special tokens and room for merges


def shipped_texts() -> list[str]:
    """Every non-blank line (one paragraph each) of the text files in awqd/data, in file-name order."""
    data = resources.files("awqd") / "data"
    files = sorted((entry for entry in data.iterdir() if entry.name.endswith(".txt")), key=lambda entry: entry.name)
    return [line.strip() for entry in files for line in entry.read_text(encoding="utf-8").splitlines() if line.strip()]


def train_tokenizer(
    out_dir: Path, vocab_size: int, extra_tokens_to: int | None = None, texts: Iterable[str] | None = None
) -> PreTrainedTokenizerFast:
    """Train on `texts` (default: the shipped text) and save in transformers format (tokenizer.json,
    tokenizer_config.json, special_tokens_map.json).

    The shipped text is small, so BPE may stop below `vocab_size`. `extra_tokens_to` pads the vocabulary to
    exactly that many ids with "<extra_N>" entries, so that every id a model of that vocabulary can emit
    decodes. They go into the BPE vocabulary rather than the added-token list, which keeps loading fast
    with 128k ids and keeps the entries from ever matching input text.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise InvalidArgument("vocab_size", f"must be at least {MIN_VOCAB_SIZE}, got {vocab_size}")
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(shipped_texts() if texts is None else texts, trainer)
    trained_size = tokenizer.get_vocab_size()
    if extra_tokens_to is not None:
        if extra_tokens_to < trained_size:
            raise InvalidArgument(
                "extra_tokens_to", f"{extra_tokens_to} is smaller than the trained vocabulary ({trained_size})"
            )
        tokenizer = _pad_vocabulary(tokenizer, extra_tokens_to)
    # Llama-style: every encoded sequence starts with <s>.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def _pad_vocabulary(tokenizer: Tokenizer, size: int) -> Tokenizer:
    state = json.loads(tokenizer.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    for token_id in range(len(vocab), size):
        vocab[f"<extra_{token_id}>"] = token_id
    return Tokenizer.from_str(json.dumps(state))
