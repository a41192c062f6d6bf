"""CLIP's byte-level BPE tokenizer, read from local files (no download).

Two vocabulary formats:

- Hugging Face: ``vocab.json`` (token -> id) and ``merges.txt`` (a
  ``#version`` line, then one ``left right`` merge a line, best first);
- open_clip / OpenAI: ``bpe_simple_vocab_16e6.txt.gz``, the merges only
  (first line a header; the first 49152 - 256 - 2 merges are used). The
  vocabulary is then built as the reference builds it: the 256 byte symbols,
  the same with ``</w>``, one token per merge, ``<start_of_text>``,
  ``<end_of_text>``.

Encoding a text (Hugging Face's ``CLIPTokenizer`` without ftfy):

1. Unicode NFC, runs of whitespace -> one space, lower case;
2. split with the regex ``'s|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+``
   (whitespace between pieces is dropped);
3. each piece's UTF-8 bytes -> GPT-2's printable byte symbols, ``</w>``
   appended to the last symbol, then the merges applied greedily by rank
   (the lowest-ranked adjacent pair first, all its occurrences left to right)
   until no pair is a merge;
4. ``[start] + ids + [end]``, truncated to ``context_length`` (keeping the end
   token last) and padded with 0.

open_clip's own tokenizer also runs ftfy and ``html.unescape``; this one does
not (no ftfy dependency), so texts with mojibake, HTML entities or curly
quotes can tokenise differently there.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import unicodedata
from collections.abc import Sequence

import numpy as np
import regex

_PIECES = regex.compile(
  r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
)
_SPACES = regex.compile(r'\s+')
OPEN_CLIP_MERGES = 49152 - 256 - 2


class TokenizerFileError(ValueError):
  """A missing or malformed vocabulary file; one line naming it."""


@functools.cache
def byte_symbols() -> tuple[str, ...]:
  """GPT-2's printable stand-in for each byte 0..255.

  Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves;
  the other 68 bytes, in increasing order, get the code points 256, 257, ...
  """
  keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
  out, extra = {}, 0
  for b in range(256):
    if b in keep:
      out[b] = chr(b)
    else:
      out[b] = chr(256 + extra)
      extra += 1
  return tuple(out[b] for b in range(256))


class ClipTokenizer:
  """Texts -> CLIP token ids int32 [N, context_length]."""

  def __init__(
    self,
    vocab: dict[str, int],
    merges: Sequence[tuple[str, str]],
    start: str,
    end: str,
    context_length: int = 77,
  ):
    missing = [t for t in (start, end) if t not in vocab]
    if missing:
      raise TokenizerFileError(f'the vocabulary has no {missing[0]!r} token')
    self.vocab = vocab
    self.ranks = {tuple(m): i for i, m in enumerate(merges)}
    self.start_id, self.end_id = vocab[start], vocab[end]
    self.context_length = context_length
    self._cache: dict[str, list[str]] = {}

  @classmethod
  def from_hf(cls, folder: str, context_length: int = 77) -> ClipTokenizer:
    """A Hugging Face tokenizer folder: vocab.json + merges.txt."""
    vocab_path = os.path.join(folder, 'vocab.json')
    merges_path = os.path.join(folder, 'merges.txt')
    for p in (vocab_path, merges_path):
      if not os.path.isfile(p):
        raise TokenizerFileError(
          f'{p}: no such file (a CLIP tokenizer folder has vocab.json and merges.txt)'
        )
    try:
      with open(vocab_path, encoding='utf-8') as f:
        vocab = json.load(f)
    except (OSError, ValueError) as e:
      raise TokenizerFileError(f'{vocab_path}: not a JSON vocabulary ({e})') from None
    with open(merges_path, encoding='utf-8') as f:
      lines = f.read().split('\n')
    merges = _parse_merges(
      [x for x in lines if x and not x.startswith('#version')], merges_path
    )
    return cls(vocab, merges, '<|startoftext|>', '<|endoftext|>', context_length)

  @classmethod
  def from_open_clip(cls, path: str, context_length: int = 77) -> ClipTokenizer:
    """open_clip's gzipped merges file (bpe_simple_vocab_16e6.txt.gz)."""
    if not os.path.isfile(path):
      raise TokenizerFileError(f'{path}: no such file')
    try:
      with gzip.open(path, 'rt', encoding='utf-8') as f:
        lines = f.read().split('\n')
    except (OSError, UnicodeDecodeError) as e:
      raise TokenizerFileError(f'{path}: not a gzipped BPE merges file ({e})') from None
    merges = _parse_merges([x for x in lines[1 : OPEN_CLIP_MERGES + 1] if x], path)
    # The reference lists the byte symbols printable ones first (its dict's order).
    symbols = sorted(byte_symbols(), key=lambda s: (ord(s) >= 256, ord(s)))
    tokens = symbols + [s + '</w>' for s in symbols] + [a + b for a, b in merges]
    tokens += ['<start_of_text>', '<end_of_text>']
    vocab = {t: i for i, t in enumerate(tokens)}
    return cls(vocab, merges, '<start_of_text>', '<end_of_text>', context_length)

  @classmethod
  def from_path(cls, path: str, context_length: int = 77) -> ClipTokenizer:
    """A folder (Hugging Face files) or a .gz merges file (open_clip)."""
    if os.path.isdir(path):
      return cls.from_hf(path, context_length)
    return cls.from_open_clip(path, context_length)

  def _bpe(self, piece: str) -> list[str]:
    if piece in self._cache:
      return self._cache[piece]
    word = list(piece[:-1]) + [piece[-1] + '</w>']
    while len(word) > 1:
      pairs = {(a, b) for a, b in zip(word, word[1:])}
      best = min(pairs, key=lambda p: self.ranks.get(p, float('inf')))
      if best not in self.ranks:
        break
      merged, i = [], 0
      while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == best:
          merged.append(word[i] + word[i + 1])
          i += 2
        else:
          merged.append(word[i])
          i += 1
      word = merged
    if len(self._cache) < 100_000:
      self._cache[piece] = word
    return word

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text`` without start/end tokens or truncation."""
    text = _SPACES.sub(' ', unicodedata.normalize('NFC', text)).strip().lower()
    symbols = byte_symbols()
    ids = []
    for piece in _PIECES.findall(text):
      piece = ''.join(symbols[b] for b in piece.encode('utf-8'))
      for token in self._bpe(piece):
        if token not in self.vocab:
          raise TokenizerFileError(f'BPE token {token!r} is not in the vocabulary')
        ids.append(self.vocab[token])
    return ids

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """int32 [N, context_length]: start, ids, end, 0-padding (truncated)."""
    if isinstance(texts, str):
      raise TypeError('expected a list of texts, got a single string')
    out = np.zeros((len(texts), self.context_length), np.int32)
    for i, text in enumerate(texts):
      ids = [self.start_id, *self.encode(text)][: self.context_length - 1]
      ids.append(self.end_id)
      out[i, : len(ids)] = ids
    return out


def _parse_merges(lines: list[str], path: str) -> list[tuple[str, str]]:
  merges = []
  for n, line in enumerate(lines):
    parts = line.split()
    if len(parts) != 2:
      raise TokenizerFileError(f'{path}: merge {n} is not two symbols: {line!r}')
    merges.append((parts[0], parts[1]))
  return merges
