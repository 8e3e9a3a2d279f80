"""Specs for textmef.clip.tokenizer: CLIP's byte-level BPE tokenizer and its packaged vocab."""

from __future__ import annotations

import string
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from textmef.clip.tokenizer import (
    DEFAULT_CONTEXT_LENGTH,
    VOCAB_FILENAME,
    Tokenizer,
    bytes_to_unicode,
    clean_text,
    default_vocab_path,
    get_pairs,
    get_tokenizer,
)

SOT = 49406
EOT = 49407

# Reference ids from open_clip 3.3.0's SimpleTokenizer (open_clip/tokenizer.py, with ftfy 6.3.1
# and regex installed): SimpleTokenizer().encode(text) for each text.
LONG_TEXT = " ".join(["a well-exposed photo of a mountain lake at sunset"] * 10)
_LONG_UNIT = [320, 1123, 268, 12180, 1125, 539, 320, 3965, 2553, 536, 3424]
LONG_IDS = _LONG_UNIT * 10  # open_clip gave these 110 ids: the 11 above, ten times
REFERENCE_IDS: dict[str, list[int]] = {
    "a photo of a cat": [320, 1125, 539, 320, 2368],
    "X X X X X X X X X X X X X X X X": [343] * 16,
    "over-exposed": [962, 268, 12180],
    "well-exposed photo": [1123, 268, 12180, 1125],
    "Under-Exposed!!": [1798, 268, 12180, 748],
    "héllo wörld 123": [71, 3459, 19293, 86, 31762, 730, 272, 273, 274],
    "don't stop": [847, 713, 1691],
    "": [],
    LONG_TEXT: LONG_IDS,
}
# open_clip's SimpleTokenizer()(LONG_TEXT)[0] (it always truncates): the first 77 of
# [SOT, *ids, EOT] with the last one replaced by EOT.
LONG_TRUNCATED_ROW = [SOT, *LONG_IDS[:75], EOT]
# open_clip's SimpleTokenizer().decode(encode(text)) for two of the texts.
REFERENCE_DECODED = {
    "Under-Exposed!!": "under - exposed !! ",
    "héllo wörld 123": "héllo wörld 1 2 3 ",
}
SHORT_TEXTS = [text for text in REFERENCE_IDS if text != LONG_TEXT]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return get_tokenizer()


def _expected_row(ids: list[int], context_length: int = DEFAULT_CONTEXT_LENGTH) -> list[int]:
    row = [SOT, *ids, EOT]
    return row + [0] * (context_length - len(row))


# --- vocabulary -----------------------------------------------------------------------------


def test_packaged_vocab_and_licence_exist():
    path = default_vocab_path()
    assert path.name == VOCAB_FILENAME
    assert path.is_file()
    assert path.with_name("VOCAB_LICENSE.md").is_file()


def test_special_tokens_and_vocab_size(tok):
    assert tok.sot_token == SOT
    assert tok.eot_token == EOT
    assert tok.vocab_size == 49408


def test_get_tokenizer_is_shared():
    assert get_tokenizer() is get_tokenizer()


def test_import_reads_no_file():
    """Importing the module opens nothing (checked with an audit hook in a fresh interpreter)."""
    code = f"""
import sys
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
import textmef.clip.tokenizer as t
assert not [p for p in opened if p.endswith({VOCAB_FILENAME!r})], opened
assert t.load_merges.cache_info().currsize == 0
assert t.get_tokenizer.cache_info().currsize == 0
t.get_tokenizer()  # positive control: building the tokenizer does open the vocab
assert [p for p in opened if p.endswith({VOCAB_FILENAME!r})], "audit hook saw no open"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_bytes_to_unicode_is_a_printable_bijection():
    mapping = bytes_to_unicode()
    assert sorted(mapping) == list(range(256))
    assert len(set(mapping.values())) == 256
    assert all(char.isprintable() and not char.isspace() for char in mapping.values())
    assert mapping[ord("a")] == "a"
    assert mapping[ord(" ")] == "Ġ"  # GPT-2/CLIP's well-known stand-in for the space byte


def test_get_pairs():
    assert get_pairs(("l", "o", "w</w>")) == {("l", "o"), ("o", "w</w>")}
    assert get_pairs(("a</w>",)) == set()


# --- encode / decode ------------------------------------------------------------------------


@pytest.mark.parametrize("text", list(REFERENCE_IDS), ids=lambda t: repr(t[:24]))
def test_encode_matches_open_clip(tok, text):
    assert tok.encode(text) == REFERENCE_IDS[text]


def test_encode_has_no_special_tokens(tok):
    ids = tok.encode("a photo of a cat")
    assert SOT not in ids and EOT not in ids


def test_clean_text_collapses_whitespace_unescapes_html_and_lowercases():
    assert clean_text("  A\tPhoto\n of &amp;amp; CAT  ") == "a photo of & cat"


def test_curly_apostrophe_is_straightened(tok):
    assert tok.encode("don\u2019t stop") == REFERENCE_IDS["don't stop"]


@pytest.mark.parametrize("text", list(REFERENCE_DECODED))
def test_decode_matches_open_clip(tok, text):
    assert tok.decode(tok.encode(text)) == REFERENCE_DECODED[text]


@pytest.mark.parametrize("text", ["a photo of a cat", "well exposed photo", "the quick brown fox"])
def test_decode_round_trips_plain_lower_case_text(tok, text):
    assert tok.decode(tok.encode(text)) == text + " "


def test_decode_accepts_a_tensor(tok):
    row = tok("a photo of a cat")[0]
    n = int(row.argmax())
    assert tok.decode(row[1:n]) == "a photo of a cat "
    assert tok.decode(row[: n + 1]) == "<|startoftext|>a photo of a cat <|endoftext|>"


def test_decode_rejects_unknown_ids(tok):
    with pytest.raises(ValueError, match="49408"):
        tok.decode([320, 49408])


words = st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.lists(words, min_size=1, max_size=12))
def test_encode_decode_round_trips_lower_case_words(words_list):
    text = " ".join(words_list)
    assert get_tokenizer().decode(get_tokenizer().encode(text)).split() == words_list


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.printable, max_size=60))
def test_encode_decode_keeps_every_non_space_character(text):
    decoded = get_tokenizer().decode(get_tokenizer().encode(text))
    assert "".join(decoded.split()) == "".join(clean_text(text).split())


# --- __call__ -------------------------------------------------------------------------------


def test_call_layout(tok):
    tokens = tok(SHORT_TEXTS)
    assert isinstance(tokens, torch.Tensor)
    assert tokens.dtype == torch.long
    assert tokens.shape == (len(SHORT_TEXTS), DEFAULT_CONTEXT_LENGTH)
    for row, text in zip(tokens, SHORT_TEXTS):
        ids = REFERENCE_IDS[text]
        assert row.tolist() == _expected_row(ids)
        assert int(row.argmax()) == len(ids) + 1  # CLIP pools text features at the EOT token


def test_call_single_string_and_context_length(tok):
    tokens = tok("over-exposed", context_length=8)
    assert tokens.shape == (1, 8)
    assert tokens[0].tolist() == _expected_row([962, 268, 12180], context_length=8)


def test_call_empty_batch(tok):
    assert tok([]).shape == (0, DEFAULT_CONTEXT_LENGTH)


def test_exact_fit_is_not_too_long(tok):
    fits = " ".join(["x"] * (DEFAULT_CONTEXT_LENGTH - 2))
    row = tok(fits)[0].tolist()
    assert row[0] == SOT and row[-1] == EOT and row[1:-1] == [343] * 75
    with pytest.raises(ValueError):
        tok(fits + " x")


def test_too_long_raises_naming_the_text(tok):
    with pytest.raises(ValueError, match="too long") as info:
        tok(["a photo of a cat", LONG_TEXT])
    assert LONG_TEXT in str(info.value)


def test_truncate_keeps_eot_last_like_open_clip(tok):
    tokens = tok(["a photo of a cat", LONG_TEXT], truncate=True)
    assert tokens.shape == (2, DEFAULT_CONTEXT_LENGTH)
    assert tokens[1].tolist() == LONG_TRUNCATED_ROW
    assert int(tokens[1, -1]) == EOT
    assert int(tokens[1].argmax()) == DEFAULT_CONTEXT_LENGTH - 1
    assert tokens[0].tolist() == _expected_row(REFERENCE_IDS["a photo of a cat"])


def test_call_rejects_non_strings(tok):
    with pytest.raises(TypeError):
        tok(["a cat", 3])  # type: ignore[list-item]


def test_call_rejects_tiny_context_length(tok):
    with pytest.raises(ValueError, match="context_length"):
        tok("a cat", context_length=1)
