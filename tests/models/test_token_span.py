"""prompt_bytes_cap is sound: no text tokenizes to fewer tokens than its bytes over the longest token's bytes (times
the margin where a normalizer shrinks text), for the tokenizer styles awqd's models use; and tokenizers that can
pack unbounded text into a token get no cap."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from awqd.models.token_span import SHRINK_MARGIN, longest_token_bytes, prompt_bytes_cap
from awqd.models.tokenizer import shipped_texts, train_tokenizer

LONG_SPECIAL = "<|a_rather_long_special_token_of_this_test|>"  # one token, longer than any the texts train
BYTE_TOKENS = [f"<0x{byte:02X}>" for byte in range(256)]
QWEN_SPLIT = Regex(r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s+""")


def wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>")


def train(tokenizer: Tokenizer, special: list[str], **trainer) -> PreTrainedTokenizerFast:
    tokenizer.train_from_iterator(
        shipped_texts(), trainers.BpeTrainer(vocab_size=700, special_tokens=special, show_progress=False, **trainer)
    )
    tokenizer.add_special_tokens([LONG_SPECIAL])
    return wrap(tokenizer)


def llama2_style() -> PreTrainedTokenizerFast:
    """SentencePiece as Llama-2 and Mistral ship it: "▁" for spaces, unknown characters as byte tokens."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    return train(tokenizer, ["<unk>", "<s>", "</s>", *BYTE_TOKENS])


def qwen2_style() -> PreTrainedTokenizerFast:
    """NFC, a regex split, then byte-level BPE, as Qwen2 ships it."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(QWEN_SPLIT, behavior="isolated"), pre_tokenizers.ByteLevel(use_regex=False)]
    )
    return train(tokenizer, ["<unk>", "<s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[PreTrainedTokenizerFast, int]]:
    """Each style with the factor its normalizer may shrink text by."""
    demo = train_tokenizer(tmp_path_factory.mktemp("demo-tokenizer"), 600)
    demo.add_special_tokens({"additional_special_tokens": [LONG_SPECIAL]})
    return {"demo (byte-level BPE)": (demo, 1), "llama-2": (llama2_style(), 1), "qwen2": (qwen2_style(), SHRINK_MARGIN)}


# Combining marks that NFC composes, the sequences byte tokens cover, and the long special token typed as text.
texts = st.lists(
    st.one_of(
        st.text(max_size=30),
        st.sampled_from(["e\u0301", "\u1100\u1161\u11a8", "\U0001f600", "  ", LONG_SPECIAL, "▁▁"]),
    ),
    max_size=12,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=texts)
def test_no_text_packs_more_bytes_into_a_token_than_the_bound(tokenizers, text):
    for name, (tokenizer, shrink) in tokenizers.items():
        longest = longest_token_bytes(tokenizer)
        assert longest is not None, name
        tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert tokens * longest * shrink >= len(text.encode()), f"{name}: {tokens} tokens for {text!r}"


def test_the_cap_counts_the_longest_added_token(tokenizers):
    for name, (tokenizer, _) in tokenizers.items():
        assert longest_token_bytes(tokenizer) >= len(LONG_SPECIAL), name
        assert prompt_bytes_cap(tokenizer, 100) == SHRINK_MARGIN * longest_token_bytes(tokenizer) * 100


def byte_level(normalizer=None, pre_tokenizer=None, alphabet: bool = True, added=None) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel()
    wrapped = train(
        tokenizer, ["<unk>", "<s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if alphabet else []
    )
    if added is not None:  # "   <mask>   " is one token, whatever the spaces
        wrapped.add_special_tokens({"additional_special_tokens": [added]})
    return wrapped


def word_level() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.train_from_iterator(shipped_texts(), trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>"]))
    return wrap(tokenizer)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(word_level, id="word-level-unknown-swallows-a-word"),
        pytest.param(lambda: byte_level(normalizers.Strip()), id="strip-drops-whitespace"),
        pytest.param(lambda: byte_level(normalizers.Replace(Regex(r"\s+"), " ")), id="regex-replace"),
        pytest.param(
            lambda: byte_level(
                pre_tokenizer=pre_tokenizers.Sequence(
                    [pre_tokenizers.Split(" ", behavior="removed"), pre_tokenizers.ByteLevel()]
                )
            ),
            id="split-removes",
        ),
        pytest.param(lambda: byte_level(alphabet=False), id="bytes-missing-from-the-vocabulary"),
        pytest.param(lambda: byte_level(added=AddedToken("<mask>", lstrip=True)), id="added-token-absorbs-spaces"),
    ],
)
def test_tokenizers_that_can_pack_unbounded_text_get_no_cap(build):
    assert longest_token_bytes(byte_level()) is not None  # the byte-level cases each change one step of it
    tokenizer = build()
    assert longest_token_bytes(tokenizer) is None
    assert prompt_bytes_cap(tokenizer, 100) is None
