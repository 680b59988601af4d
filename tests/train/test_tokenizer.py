import numpy as np
import pytest
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

from pythia_dynamics.analyses import svd_directions
from pythia_dynamics.train.tokenizer import (
    EOS_TOKEN,
    bytes_to_unicode,
    encode_docs,
    encode_text,
    train_tokenizer,
)

DOCS = [
    "def add(a, b):\n    return a + b\n\n\nclass Thing:\n    pass\n" * 20,
    "Grüße aus Köln — naïve café, 日本語のテキスト, emoji 🙂🚀.\n" * 20,
    "import os\nimport sys\n\nif __name__ == '__main__':\n    sys.exit(main())\n" * 20,
]
VOCAB = 300

TRICKY = [
    "",
    "x",
    "  leading spaces and trailing  \n",
    "tabs\tand\r\nCRLF\rand a lone CR",
    "spaces before punctuation , . ; ) ] }",
    "Grüße — naïve café 日本語 🙂 \u0000 \u00ff \u200b zero-width",
    "def f(x):\n\treturn x ** 2  # ünïcödé comment\n",
    "".join(chr(c) for c in range(1, 256)),
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(DOCS, VOCAB)


def test_byte_table_is_the_tokenizers_byte_level_one():
    """bytes_to_unicode (also read by the SVD-directions token display) against the tokenizers library."""
    chars = bytes_to_unicode()
    assert sorted(chars) == list(range(256)) and set(chars.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    # Every byte that UTF-8 text can hold, mapped by the library's own byte-level pre-tokenizer.
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    text = "".join(chr(c) for c in [*range(1, 0x80), *range(0x80, 0x800, 7), 0xE000, 0xFFFD, 0x1F642, 0x10FFFF])
    ((mapped, _),) = pre.pre_tokenize_str(text)
    assert mapped == "".join(chars[b] for b in text.encode("utf-8"))
    assert len(set(text.encode("utf-8"))) == 127 + 64 + 30 + 4  # ASCII, continuation and lead bytes
    # the SVD-directions token display inverts the same table
    assert {char: byte for byte, char in chars.items()} == svd_directions._byte_decoder()


def test_first_256_ids_are_the_bytes_in_order(tok):
    chars = bytes_to_unicode()
    assert tok.convert_ids_to_tokens(list(range(256))) == [chars[b] for b in range(256)]
    for b in range(128):
        assert tok.decode([b]) == chr(b)
    # multi-byte characters decode from their raw UTF-8 bytes used directly as ids
    for s in ["é", "日本語", "🙂", "Grüße"]:
        assert tok.decode(list(s.encode("utf-8"))) == s


def test_merges_follow_bytes_and_eos_is_last(tok):
    assert len(tok) == VOCAB
    assert tok.eos_token == EOS_TOKEN
    assert tok.eos_token_id == VOCAB - 1
    assert tok.bos_token_id == tok.unk_token_id == VOCAB - 1
    merged = tok.convert_ids_to_tokens(list(range(256, VOCAB - 1)))
    assert all(len(t) >= 2 for t in merged)
    assert len(set(merged)) == len(merged)
    # the most frequent pair in DOCS is the indentation's double space, so it is the first merge
    assert merged[0] == "ĠĠ"


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_is_exact(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert encode_text(tok, text).tolist() == ids


def test_saved_tokenizer_loads_with_autotokenizer(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(loaded) == VOCAB
    assert loaded.eos_token_id == VOCAB - 1
    for text in TRICKY:
        ids = loaded.encode(text, add_special_tokens=False)
        assert ids == tok.encode(text, add_special_tokens=False)
        assert loaded.decode(ids) == text


def test_endoftext_is_one_special_token(tok):
    ids = encode_text(tok, f"a{EOS_TOKEN}b")
    assert ids.tolist() == [ord("a"), VOCAB - 1, ord("b")]


def test_encode_docs_separates_documents_with_eos(tok):
    stream = encode_docs(tok, ["ab", "c"])
    assert stream.dtype == np.int64
    assert stream.tolist() == tok.encode("ab") + [VOCAB - 1] + tok.encode("c") + [VOCAB - 1]


def test_training_is_deterministic():
    a = train_tokenizer(DOCS, VOCAB).backend_tokenizer.to_str()
    b = train_tokenizer(DOCS, VOCAB).backend_tokenizer.to_str()
    assert a == b
