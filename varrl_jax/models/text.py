"""Byte-level prompt tokenizer: needs no vocabulary file and no download.

ids: 0 = PAD, 1 = BOS, 2 = EOS, 3 + b for UTF-8 byte b. Every encoded prompt
starts with BOS, so even the null (unconditional) prompt used by
classifier-free guidance has one valid token to attend to. Prompts are padded
to the static length ``max_len`` (the transformer's text length).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PAD, BOS, EOS = 0, 1, 2
NUM_SPECIAL = 3
VOCAB_SIZE = 256 + NUM_SPECIAL


class PromptError(ValueError):
  """An empty, over-long or non-string prompt."""


def encode(prompts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Prompts -> (ids int32 [B, max_len], mask bool [B, max_len]).

  Layout: BOS, UTF-8 bytes, EOS, PAD... An empty prompt or one whose encoding
  needs more than ``max_len`` tokens raises `PromptError` naming its index.
  """
  if isinstance(prompts, str):
    raise PromptError('expected a list of prompts, got a single string')
  ids = np.full((len(prompts), max_len), PAD, dtype=np.int32)
  for i, prompt in enumerate(prompts):
    if not isinstance(prompt, str):
      raise PromptError(f'prompt {i}: expected str, got {type(prompt).__name__}')
    if not prompt.strip():
      raise PromptError(f'prompt {i} is empty')
    data = prompt.encode('utf-8')
    if len(data) + 2 > max_len:
      raise PromptError(
        f'prompt {i} is too long: {len(data)} bytes, at most {max_len - 2} fit '
        f'(config.model.text_len={max_len})'
      )
    ids[i, 0] = BOS
    ids[i, 1 : 1 + len(data)] = np.frombuffer(data, dtype=np.uint8) + NUM_SPECIAL
    ids[i, 1 + len(data)] = EOS
  return ids, ids != PAD


def null_prompt(batch: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """The unconditional prompt: BOS then padding."""
  ids = np.full((batch, max_len), PAD, dtype=np.int32)
  ids[:, 0] = BOS
  return ids, ids != PAD


def decode(ids: np.ndarray) -> list[str]:
  """Inverse of `encode` (specials dropped)."""
  out = []
  for row in np.asarray(ids):
    data = bytes(int(t) - NUM_SPECIAL for t in row if t >= NUM_SPECIAL)
    out.append(data.decode('utf-8', errors='replace'))
  return out
