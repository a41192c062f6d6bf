"""Frozen T5 prompt embeddings, computed once per prompt and cached on the host.

Infinity's ``encode_prompt`` (tools/run_infinity.py, and train.py the same
way) tokenizes with ``max_length=512, padding='max_length',
truncation=True``, runs ``T5EncoderModel(input_ids, attention_mask)``, takes
``last_hidden_state.float()`` (no normalisation there: the transformer's own
``text_norm`` comes later) and keeps each prompt's first ``len_i`` rows
(``kv_compact``, ``lens``, ``cu_seqlens_k``, ``Ltext = max(lens)``).

`PromptEmbedder` gives the same rows. Because padded keys are masked and the
position bias depends only on ``k − q``, a prompt's rows do not depend on how
far its batch was padded, so the prompts missing from the cache are encoded
in one batch padded to a power of two (rows and length, at most
``max_length``; few compiled shapes) and each is cached as ``[len_i, D]``.
RL rollouts ask for the same prompts again and again: those never reach the
encoder.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from varrl_jax.models import t5 as t5_lib
from varrl_jax.models import t5_tokenizer, t5_weights


class PromptEmbeddings(NamedTuple):
  """``B`` prompts' T5 rows padded to ``L``: embeddings float32 [B, L, D]
  (zeros past each length), mask bool [B, L], lengths int32 [B]."""

  embeddings: np.ndarray
  mask: np.ndarray
  lengths: np.ndarray


def to_compact(emb: PromptEmbeddings) -> tuple[np.ndarray, list[int], np.ndarray, int]:
  """Infinity's ``(kv_compact [Σ len, D], lens, cu_seqlens_k [B+1] int32, Ltext)``."""
  lens = [int(n) for n in emb.lengths]
  kv = np.concatenate([e[:n] for e, n in zip(emb.embeddings, lens)], axis=0)
  cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
  return kv, lens, cu, max(lens, default=0)


def _bucket(n: int, low: int, high: int) -> int:
  """The next power of two >= n, within [low, high]."""
  return min(high, max(low, 1 << max(n - 1, 0).bit_length()))


class PromptEmbedder:
  """Prompt strings -> `PromptEmbeddings`, each prompt encoded only once.

  ``cache_size``: the most prompts kept (least recently used dropped first);
  None keeps every prompt. ``encoder_calls`` counts encoder runs (one per new
  prompt) and ``encoded_prompts`` the prompts they held.
  """

  def __init__(
    self,
    cfg: t5_lib.T5Config,
    params: Any,
    tokenizer: t5_tokenizer.T5Tokenizer,
    *,
    max_length: int = 512,
    cache_size: int | None = None,
  ):
    if max_length < 1:
      raise ValueError(f'PromptEmbedder: max_length must be >= 1, got {max_length}')
    if cache_size is not None and cache_size < 1:
      raise ValueError(f'PromptEmbedder: cache_size must be >= 1, got {cache_size}')
    self.cfg = cfg
    self.params = jax.device_put(params)
    self.tokenizer = tokenizer
    self.max_length = max_length
    self.cache_size = cache_size
    self._cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    module = t5_lib.T5Encoder(cfg)
    self._encode = jax.jit(lambda p, ids, mask: module.apply({'params': p}, ids, mask))
    self.encoder_calls = 0
    self.encoded_prompts = 0

  @classmethod
  def from_folder(
    cls,
    folder: str | os.PathLike,
    *,
    max_length: int = 512,
    cache_size: int | None = None,
    **overrides: Any,
  ) -> PromptEmbedder:
    """From a local Hugging Face T5 folder (config, weights, ``spiece.model``);
    ``overrides`` go to `T5Config` (e.g. ``dtype``)."""
    cfg, params = t5_weights.load_t5_encoder(folder, **overrides)
    tok = t5_tokenizer.T5Tokenizer.from_folder(folder)
    return cls(cfg, params, tok, max_length=max_length, cache_size=cache_size)

  def __len__(self) -> int:
    return len(self._cache)

  def _encode_missing(self, prompts: list[str]) -> None:
    # One prompt per call, padded to its own length bucket: its embedding is
    # then the same numbers whichever prompts were missing with it (a resumed
    # run starts with an empty cache and must see the same conditioning).
    for prompt in prompts:
      seq = self.tokenizer.encode(prompt, self.max_length)
      length = _bucket(len(seq), 8, self.max_length)
      ids = np.zeros((1, length), np.int32)
      mask = np.zeros((1, length), np.int32)
      ids[0, : len(seq)] = seq
      mask[0, : len(seq)] = 1
      out = np.asarray(self._encode(self.params, ids, mask))
      self.encoder_calls += 1
      self.encoded_prompts += 1
      self._cache[prompt] = out[0, : len(seq)].copy()

  def __call__(
    self, prompts: Sequence[str], length: int | None = None
  ) -> PromptEmbeddings:
    """Embeddings of ``prompts`` padded to ``length`` (default ``max_length``,
    Infinity's static 512); every prompt's length must fit."""
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
      raise TypeError('PromptEmbedder: expected a sequence of prompt strings')
    length = self.max_length if length is None else length
    missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
    if missing:
      self._encode_missing(missing)
    rows = []
    for p in prompts:
      self._cache.move_to_end(p)
      rows.append(self._cache[p])
    if self.cache_size is not None:
      while len(self._cache) > self.cache_size:
        self._cache.popitem(last=False)
    emb = np.zeros((len(rows), length, self.cfg.d_model), np.float32)
    mask = np.zeros((len(rows), length), bool)
    lengths = np.asarray([len(r) for r in rows], np.int32)
    for b, (prompt, r) in enumerate(zip(prompts, rows)):
      if len(r) > length:
        raise ValueError(
          f'PromptEmbedder: prompt {prompt[:40]!r} has {len(r)} tokens > length {length}'
        )
      emb[b, : len(r)] = r
      mask[b, : len(r)] = True
    return PromptEmbeddings(emb, mask, lengths)
