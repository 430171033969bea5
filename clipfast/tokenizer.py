"""CLIP's byte-level BPE tokenizer; ids equal ``open_clip.tokenize`` / OpenAI ``clip.tokenize(truncate=True)``.

Vocabulary (49408 ids): the 256 byte symbols, the same 256 with ``</w>`` (end of word), the first 48894 merges of
``bpe_simple_vocab_16e6.txt.gz`` (OpenAI's data, MIT license, see ``THIRD_PARTY_NOTICES.md``), then the specials
``<start_of_text>`` = 49406 and ``<end_of_text>`` = 49407 (OpenCLIP's spelling). Text is cleaned by
``ftfy.fix_text``, twice ``html.unescape``, whitespace collapse and lowercasing (``clean='lower'``), split by the
CLIP regex (contractions, letter runs, single digits, punctuation runs), each piece is UTF-8 encoded, mapped to
byte symbols and merged by rank. A row is ``[sot, tokens..., eot]`` zero-padded to ``context_length``
(id 0 is a real token, ``"!"``); longer rows are cut to ``context_length`` with eot in the last slot.

BPE results are cached per word, so tokenizing a corpus costs one merge loop per distinct word.
"""
import gzip
import html
import random
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Sequence, Union

import ftfy
import regex
import torch

__all__ = ["SimpleTokenizer", "tokenize", "decode", "SOT_TOKEN_ID", "EOT_TOKEN_ID", "DEFAULT_CONTEXT_LENGTH",
           "default_bpe"]

DEFAULT_CONTEXT_LENGTH = 77
SOT_TOKEN_ID = 49406
EOT_TOKEN_ID = 49407
_NUM_MERGES = 49152 - 256 - 2  # merges used: lines 1..48894 of the file (line 0 is a version header)
_SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")


def default_bpe():
    """Path of the BPE merges file shipped with clipfast."""
    return str(Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz"))


@lru_cache()
def bytes_to_unicode():
    """Reversible map byte (0..255) -> printable unicode char: printable Latin-1 bytes map to themselves, the
    rest (whitespace, control) to chars from U+0100 on, so BPE never sees whitespace or control chars."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _basic_clean(text):
    text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def _whitespace_clean(text):
    return " ".join(text.split())


def _canonicalize(text):
    """big_vision's canonicalization: ``_`` -> space, ASCII punctuation removed, lowercase, whitespace collapsed."""
    import string

    text = text.replace("_", " ").translate(str.maketrans("", "", string.punctuation)).lower()
    return " ".join(text.split())


_CLEAN_FNS = {
    "lower": lambda t: _whitespace_clean(_basic_clean(t)).lower(),
    "whitespace": lambda t: _whitespace_clean(_basic_clean(t)),
    "canonicalize": lambda t: _canonicalize(_basic_clean(t)),
}


class SimpleTokenizer:
    """CLIP BPE tokenizer with OpenCLIP's constructor and call semantics.

    Args:
        bpe_path: gzip merges file (default: the one shipped with clipfast).
        additional_special_tokens: extra special tokens appended after eot (ids 49408, ...).
        context_length: default row length of ``__call__``.
        clean: ``'lower'`` (CLIP), ``'whitespace'`` or ``'canonicalize'``.
        reduction_mask: ``''`` (truncate, keep eot last), ``'simple'`` (random contiguous block), ``'random'``
            (random tokens, order kept) or ``'shuffle'`` (random tokens, shuffled); OpenCLIP's strategies for
            texts longer than ``context_length - 2``. ``'syntax'`` (needs nltk data downloads) is not supported.
    """

    def __init__(self, bpe_path: Optional[str] = None, additional_special_tokens: Optional[Sequence[str]] = None,
                 context_length: Optional[int] = DEFAULT_CONTEXT_LENGTH, clean: str = "lower",
                 reduction_mask: str = ""):
        if clean not in _CLEAN_FNS:
            raise ValueError(f"clean: expected one of {sorted(_CLEAN_FNS)}, got {clean!r}")
        if reduction_mask not in ("", "simple", "random", "shuffle"):
            raise ValueError(f"reduction_mask: expected '', 'simple', 'random' or 'shuffle', got {reduction_mask!r}"
                             + (" (syntax masking needs nltk downloads; not supported)" if reduction_mask == "syntax" else ""))
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        with gzip.open(bpe_path or default_bpe(), "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1:_NUM_MERGES + 1]]
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        special_tokens = list(_SPECIAL_TOKENS) + list(additional_special_tokens or [])
        vocab += special_tokens
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {t: t for t in special_tokens}
        self.pat = regex.compile(
            "|".join(regex.escape(t) for t in special_tokens)
            + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE)
        self.vocab_size = len(self.encoder)
        self.all_special_ids = [self.encoder[t] for t in special_tokens]
        self.sot_token_id, self.eot_token_id = self.all_special_ids[:2]
        self.context_length = context_length
        self.clean = clean
        self.clean_fn = _CLEAN_FNS[clean]
        self.reduction_mask = reduction_mask

    def bpe(self, token: str) -> str:
        """Merge the byte symbols of one pre-token by rank -> space-separated BPE symbols (cached)."""
        cached = self.cache.get(token)
        if cached is not None:
            return cached
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        ranks = self.bpe_ranks
        while len(word) > 1:
            pairs = set(zip(word[:-1], word[1:]))
            best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            first, second = best
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> List[int]:
        """Clean ``text`` and return its BPE ids, without sot/eot."""
        ids = []
        for piece in self.pat.findall(self.clean_fn(text)):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self.bpe(piece).split(" "))
        return ids

    def decode(self, tokens) -> str:
        """ids (list or 1-D tensor) -> text; ``</w>`` becomes a space, invalid UTF-8 is replaced."""
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.tolist()
        text = "".join(self.decoder[int(t)] for t in tokens)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: Union[str, List[str]], context_length: Optional[int] = None) -> torch.LongTensor:
        """Tokenize one string or a list of strings.

        Args:
            texts: a string or a list of N strings.
            context_length: row length (default: the tokenizer's ``context_length``).

        Returns:
            LongTensor ``(N, context_length)``: ``[sot, ids..., eot, 0, ...]``; over-long rows are truncated with
            eot kept in the last slot (or reduced by ``reduction_mask``).
        """
        if isinstance(texts, str):
            texts = [texts]
        context_length = context_length or self.context_length
        if not context_length or context_length < 2:
            raise ValueError(f"context_length: expected an int >= 2, got {context_length!r}")
        result = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > context_length - 2 and self.reduction_mask:
                ids = self._reduce(ids, context_length - 2)
            row = [self.sot_token_id] + ids + [self.eot_token_id]
            if len(row) > context_length:
                row = row[:context_length]
                row[-1] = self.eot_token_id
            result[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        return result

    def _reduce(self, ids, keep):
        """OpenCLIP's reduction masks (same random draws: python ``random`` / ``torch.randperm``)."""
        if self.reduction_mask == "simple":
            start = random.randint(0, len(ids) - keep)
            return ids[start:start + keep]
        indices = torch.randperm(len(ids))[:keep]
        if self.reduction_mask == "random":
            indices = indices.msort()
        return torch.tensor(ids)[indices].tolist()


@lru_cache(maxsize=1)
def _default_tokenizer():
    return SimpleTokenizer()


def tokenize(texts: Union[str, List[str]], context_length: int = DEFAULT_CONTEXT_LENGTH) -> torch.LongTensor:
    """``open_clip.tokenize``: the default tokenizer's ids, LongTensor ``(N, context_length)``."""
    return _default_tokenizer()(texts, context_length=context_length)


def decode(output_ids) -> str:
    """``open_clip.decode``: ids (1-D tensor or list) -> text with the default tokenizer."""
    return _default_tokenizer().decode(output_ids)
