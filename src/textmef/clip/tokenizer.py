"""CLIP's byte-level BPE text tokenizer (the ``SimpleTokenizer`` of OpenAI CLIP and open_clip).

Text is cleaned (``ftfy`` when it is installed, HTML entities unescaped, whitespace collapsed,
lower-cased), split with CLIP's regular expression, each piece's UTF-8 bytes are mapped to
printable characters and merged with the byte-pair-encoding merges of
``bpe_simple_vocab_16e6.txt.gz`` (shipped with this package, see ``VOCAB_LICENSE.md``).

The vocabulary is read only when a :class:`Tokenizer` is built; :func:`get_tokenizer` builds
one per process on first use. Importing this module reads no file.

Example:
    >>> from textmef.clip.tokenizer import get_tokenizer
    >>> tokens = get_tokenizer()(["a well-exposed photo"])  # torch.long tensor of shape (1, 77)
"""

from __future__ import annotations

import functools
import gzip
import html
import os
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import regex
import torch

__all__ = [
    "DEFAULT_CONTEXT_LENGTH",
    "EOT_TEXT",
    "SOT_TEXT",
    "VOCAB_FILENAME",
    "Tokenizer",
    "bytes_to_unicode",
    "clean_text",
    "default_vocab_path",
    "get_pairs",
    "get_tokenizer",
    "load_merges",
]

VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
SOT_TEXT = "<|startoftext|>"
EOT_TEXT = "<|endoftext|>"
DEFAULT_CONTEXT_LENGTH = 77

#: CLIP uses the first 49152 - 256 - 2 merges of the file (after its header line), so that the
#: vocabulary is 256 bytes + 256 end-of-word bytes + merges + 2 special tokens = 49408 entries.
NUM_MERGES = 49152 - 256 - 2
_END_OF_WORD = "</w>"
_MAX_CACHE = 100_000

#: CLIP's pre-tokenization pattern: special tokens, English contractions, runs of letters,
#: single digits, runs of other non-space characters.
_PATTERN = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)

#: Without ftfy, curly quotes are still straightened as ``ftfy.fix_text`` does by default
#: (same characters as ftfy's ``uncurl_quotes``), so that "don\u2019t" tokenizes like "don't".
_UNCURL_QUOTES = {
    **{code: "'" for code in (0x02BC, *range(0x2018, 0x201C))},
    **{code: '"' for code in range(0x201C, 0x2020)},
}


def default_vocab_path() -> Path:
    """Return the path of the BPE merges file shipped inside the package.

    Returns:
        Path of ``bpe_simple_vocab_16e6.txt.gz`` next to this module.
    """
    return Path(__file__).resolve().with_name(VOCAB_FILENAME)


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Map every byte value to a printable unicode character (GPT-2 / CLIP byte encoder).

    Printable Latin-1 bytes map to themselves; the remaining 68 bytes (control characters,
    space, ...) map to ``chr(256 + n)`` in byte order, so that BPE never sees whitespace or
    control characters and every byte string round-trips.

    Returns:
        A dict from each of the 256 byte values to a one-character string, in CLIP's vocabulary
        order (printable bytes first, then the others).
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def get_pairs(word: Sequence[str]) -> set[tuple[str, str]]:
    """Return the set of adjacent symbol pairs of a word.

    Args:
        word: The word as a sequence of symbols (strings of one or more characters).

    Returns:
        Every ``(word[i], word[i + 1])``; empty for words shorter than two symbols.
    """
    return set(zip(word[:-1], word[1:]))


@functools.lru_cache(maxsize=4)
def load_merges(path: str) -> tuple[tuple[str, str], ...]:
    """Read the BPE merges CLIP uses from a gzip-compressed merges file (cached per path).

    Args:
        path: Path of a ``bpe_simple_vocab_16e6.txt.gz``-format file: a header line, then one
            space-separated merge per line in priority order.

    Returns:
        The first :data:`NUM_MERGES` merges, highest priority first.

    Raises:
        ValueError: If the file holds fewer merges or a malformed line.
    """
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")[1 : NUM_MERGES + 1]
    merges = []
    for number, line in enumerate(lines, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}: line {number} is not a BPE merge: {line!r}")
        merges.append((parts[0], parts[1]))
    if len(merges) != NUM_MERGES:
        raise ValueError(f"{path}: holds {len(merges)} merges, CLIP needs {NUM_MERGES}")
    return tuple(merges)


@functools.lru_cache(maxsize=1)
def _ftfy_fix_text() -> Callable[[str], str] | None:
    """Return ``ftfy.fix_text`` when ftfy is installed, else ``None`` (ftfy is optional)."""
    try:
        import ftfy
    except ImportError:
        return None
    return ftfy.fix_text


def clean_text(text: str) -> str:
    """Normalise text the way CLIP does before tokenizing.

    Applies ``ftfy.fix_text`` if ftfy is installed, unescapes HTML entities twice, collapses
    runs of whitespace to single spaces, strips, and lower-cases. Without ftfy only the parts
    of ``fix_text`` that are cheap to reproduce are done (NFC normalisation, straightening
    curly quotes); mojibake, ligatures and full-width characters are then left as they are.

    Args:
        text: Raw input text.

    Returns:
        The cleaned text.
    """
    fix_text = _ftfy_fix_text()
    if fix_text is not None:
        text = fix_text(text)
    text = html.unescape(html.unescape(text))
    if fix_text is None:
        text = unicodedata.normalize("NFC", text).translate(_UNCURL_QUOTES)
    return " ".join(text.split()).lower()


class Tokenizer:
    """CLIP's byte-level BPE tokenizer, producing the ids CLIP text encoders expect.

    Building one reads the merges file (a few hundred milliseconds at most); use
    :func:`get_tokenizer` for a shared instance.

    Args:
        vocab_path: Gzip-compressed BPE merges file; defaults to the packaged
            ``bpe_simple_vocab_16e6.txt.gz``.
    """

    def __init__(self, vocab_path: str | os.PathLike[str] | None = None) -> None:
        path = Path(vocab_path) if vocab_path is not None else default_vocab_path()
        merges = load_merges(str(path))
        byte_symbols = list(bytes_to_unicode().values())
        vocab = [
            *byte_symbols,
            *(symbol + _END_OF_WORD for symbol in byte_symbols),
            *(first + second for first, second in merges),
            SOT_TEXT,
            EOT_TEXT,
        ]
        self._encoder: dict[str, int] = {token: index for index, token in enumerate(vocab)}
        self._decoder: dict[int, str] = dict(enumerate(vocab))
        self._bpe_ranks: dict[tuple[str, str], int] = {
            merge: rank for rank, merge in enumerate(merges)
        }
        self._byte_encoder = bytes_to_unicode()
        self._byte_decoder = {char: byte for byte, char in self._byte_encoder.items()}
        self._cache: dict[str, tuple[str, ...]] = {}
        self._special = {SOT_TEXT: (SOT_TEXT,), EOT_TEXT: (EOT_TEXT,)}

    @property
    def sot_token(self) -> int:
        """Id of the start-of-text token ``<|startoftext|>`` (49406)."""
        return self._encoder[SOT_TEXT]

    @property
    def eot_token(self) -> int:
        """Id of the end-of-text token ``<|endoftext|>`` (49407)."""
        return self._encoder[EOT_TEXT]

    @property
    def vocab_size(self) -> int:
        """Number of token ids (49408)."""
        return len(self._encoder)

    def _bpe(self, token: str) -> tuple[str, ...]:
        """Split one byte-encoded pre-token into BPE symbols, the last one ending in ``</w>``."""
        special = self._special.get(token)
        if special is not None:
            return special
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        ranks = self._bpe_ranks
        word: tuple[str, ...] = (*token[:-1], token[-1] + _END_OF_WORD)
        while len(word) > 1:
            best = min(get_pairs(word), key=lambda pair: ranks.get(pair, NUM_MERGES))
            if best not in ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        if len(self._cache) >= _MAX_CACHE:
            self._cache.clear()
        self._cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Tokenize text into BPE ids, without start/end-of-text tokens.

        Args:
            text: Input text; it is cleaned with :func:`clean_text` first.

        Returns:
            The token ids.
        """
        ids: list[int] = []
        for piece in _PATTERN.findall(clean_text(text)):
            symbols = "".join(self._byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self._encoder[symbol] for symbol in self._bpe(symbols))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Turn token ids back into text.

        Each word ends with a space (``</w>`` becomes ``" "``), so
        ``decode(encode("a cat"))`` is ``"a cat "``; invalid UTF-8 becomes U+FFFD.

        Args:
            ids: Token ids (ints, or anything ``int()`` accepts such as 0-d tensors).

        Returns:
            The decoded text.

        Raises:
            ValueError: If an id is outside ``range(vocab_size)``.
        """
        symbols = []
        for token_id in ids:
            try:
                symbols.append(self._decoder[int(token_id)])
            except KeyError:
                raise ValueError(
                    f"token id {int(token_id)} is outside the vocabulary (0..{self.vocab_size - 1})"
                ) from None
        data = bytes(self._byte_decoder[char] for char in "".join(symbols))
        return data.decode("utf-8", errors="replace").replace(_END_OF_WORD, " ")

    def __call__(
        self,
        texts: str | Sequence[str],
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        truncate: bool = False,
    ) -> torch.Tensor:
        """Tokenize texts into a zero-padded id tensor, like ``clip.tokenize``.

        Each row is ``<|startoftext|>``, the text's ids, ``<|endoftext|>``, then zeros, so the
        end-of-text token holds the largest id of each row (CLIP pools the text features there,
        at ``argmax``).

        Args:
            texts: One text or a sequence of texts.
            context_length: Row length; 77 for every released CLIP model.
            truncate: If true, cut texts that are too long and end them with
                ``<|endoftext|>``; if false, raise instead.

        Returns:
            A ``torch.long`` tensor of shape ``(len(texts), context_length)`` (one row for a
            single string).

        Raises:
            ValueError: If a text is too long for ``context_length`` and ``truncate`` is false,
                or ``context_length`` is below 2.
            TypeError: If an element of ``texts`` is not a string.
        """
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2, got {context_length}")
        result = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts must be strings, got {type(text).__name__} at {row}")
            ids = [self.sot_token, *self.encode(text), self.eot_token]
            if len(ids) > context_length:
                if not truncate:
                    raise ValueError(
                        f"Input {text!r} is too long for context length {context_length} "
                        f"({len(ids)} tokens with start/end of text); pass truncate=True to cut it"
                    )
                ids = ids[:context_length]
                ids[-1] = self.eot_token
            result[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return result


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> Tokenizer:
    """Return the process-wide tokenizer over the packaged vocabulary, built on first call.

    Returns:
        A shared :class:`Tokenizer`.
    """
    return Tokenizer()
