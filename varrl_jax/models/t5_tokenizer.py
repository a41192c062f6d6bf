"""The T5 tokenizer: a SentencePiece model (``spiece.model``) plus T5's rules.

Ids are those of transformers' ``T5Tokenizer`` on the same ``spiece.model``
(what Infinity's ``AutoTokenizer.from_pretrained(t5_path)`` returns):

- the text is split on the special-token strings ``</s>``, ``<pad>``,
  ``<unk>`` and ``<extra_id_N>`` (each becomes its id; ``<extra_id_N>`` is
  ``sp_size + extra_ids − 1 − N``); every other piece is SentencePiece-encoded
  on its own (its normaliser strips and collapses whitespace, NFKC);
- ``</s>`` (id 1) is appended;
- ``max_length``: content is cut to ``max_length − 1`` ids, then ``</s>``,
  so the sequence always ends with ``</s>`` (transformers' truncation);
- padding with ``<pad>`` (id 0) on the right; mask 1 on the tokens.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

PAD_ID = 0
EOS_ID = 1


class T5Tokenizer:
  """SentencePiece T5 tokenizer; ``T5Tokenizer.from_folder(path)`` reads
  ``<path>/spiece.model`` (a Hugging Face T5 / Flan-T5 folder)."""

  def __init__(self, model_file: str | os.PathLike, extra_ids: int = 100):
    import sentencepiece as spm  # Only the Infinity family needs it.

    model_file = os.fspath(model_file)
    if not os.path.isfile(model_file):
      raise FileNotFoundError(f'{model_file}: no such SentencePiece model file')
    try:
      self._sp = spm.SentencePieceProcessor(model_file=model_file)
    except (RuntimeError, OSError) as e:
      msg = ' '.join(str(e).split())
      raise ValueError(f'{model_file}: not a SentencePiece model ({msg})') from None
    for name, want in (('<pad>', PAD_ID), ('</s>', EOS_ID)):
      if self._sp.piece_to_id(name) != want:
        raise ValueError(f'{model_file}: {name} is not id {want} (not a T5 vocabulary)')
    self.model_file = model_file
    self.sp_size = self._sp.get_piece_size()
    self.extra_ids = extra_ids
    specials = {'</s>': EOS_ID, '<pad>': PAD_ID, '<unk>': self._sp.unk_id()}
    specials.update(
      {f'<extra_id_{i}>': self.sp_size + extra_ids - 1 - i for i in range(extra_ids)}
    )
    self._special_ids = specials
    # Longest first, so '<extra_id_10>' is not read as '<extra_id_1>' + '0>'.
    names = sorted(specials, key=len, reverse=True)
    self._special_re = re.compile('(' + '|'.join(map(re.escape, names)) + ')')

  @classmethod
  def from_folder(cls, folder: str | os.PathLike, **kwargs) -> T5Tokenizer:
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
      raise FileNotFoundError(f'{folder}: no such T5 folder')
    return cls(os.path.join(folder, 'spiece.model'), **kwargs)

  @property
  def vocab_size(self) -> int:
    """SentencePiece pieces plus the extra ids (32100 for T5)."""
    return self.sp_size + self.extra_ids

  def encode(self, text: str, max_length: int | None = None) -> list[int]:
    """Ids of one text, ``</s>`` last; at most ``max_length`` ids."""
    if not isinstance(text, str):
      raise TypeError(f'T5Tokenizer.encode: expected a str, got {type(text).__name__}')
    ids: list[int] = []
    for i, part in enumerate(self._special_re.split(text)):
      if i % 2:  # re.split puts the captured separators at odd indices
        ids.append(self._special_ids[part])
      elif part:
        ids.extend(self._sp.encode(part))
    if max_length is not None:
      if max_length < 1:
        raise ValueError(f'max_length must be >= 1, got {max_length}')
      ids = ids[: max_length - 1]
    return ids + [EOS_ID]

  def __call__(
    self, texts: Sequence[str], max_length: int, length: int | None = None
  ) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [B, length], mask int32 [B, length]), right-padded with 0.

    Each text is truncated to ``max_length`` ids (``</s>`` included);
    ``length`` (default ``max_length``, as Infinity's ``padding='max_length'``)
    is the padded width and must be ``>=`` the longest sequence.
    """
    if isinstance(texts, str):
      raise TypeError('T5Tokenizer: expected a sequence of strings, got one str')
    seqs = [self.encode(t, max_length) for t in texts]
    length = max_length if length is None else length
    longest = max((len(s) for s in seqs), default=0)
    if longest > length:
      raise ValueError(f'T5Tokenizer: length {length} < longest sequence {longest}')
    ids = np.full((len(seqs), length), PAD_ID, np.int32)
    mask = np.zeros((len(seqs), length), np.int32)
    for b, s in enumerate(seqs):
      ids[b, : len(s)] = s
      mask[b, : len(s)] = 1
    return ids, mask
