"""Byte-level prompt tokenizer: needs no vocabulary file and no download.

ids: 0 = PAD, 1 = BOS, 2 = EOS, 3 + b for UTF-8 byte b. Every encoded prompt
starts with BOS, so even the null (unconditional) prompt used by
classifier-free guidance has one valid token to attend to. Prompts are padded
to the static length ``max_len`` (the transformer's text length).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
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


def truncate(prompt: str, max_len: int) -> str:
  """The longest prefix of ``prompt`` whose UTF-8 encoding fits ``max_len``
  (with its start and end tokens)."""
  data = prompt.encode('utf-8')[: max_len - 2]
  return data.decode('utf-8', errors='ignore')


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


_QUOTES = tuple(ord(q) + NUM_SPECIAL for q in ('"', "'"))


def _is_alnum(ids):
  """Letters, digits and any non-ASCII byte (parts of UTF-8 letters)."""
  b = ids - NUM_SPECIAL
  return (
    ((b >= ord('0')) & (b <= ord('9')))
    | ((b >= ord('A')) & (b <= ord('Z')))
    | ((b >= ord('a')) & (b <= ord('z')))
    | (b >= 128)
  )


def quote_positions(text_ids):
  """Where each byte sits inside the quoted text of its prompt.

  The words a prompt asks to render are quoted (``... that reads 'OPEN'``).
  A quote mark (``'`` or ``"``) delimits a span unless it stands between two
  letters or digits (an apostrophe, as in ``it's``); delimiters pair up from
  the left. For text_ids [B, T] this returns int32 arrays ``(from_start,
  from_end)`` [B, T]: for a byte inside a span, how many bytes of the span
  precede it and how many follow it (``'OPEN'``: O is (0, 3), N is (3, 0));
  -1 outside spans and on the quote marks. An unclosed span runs to the end
  of the prompt. Works on numpy or jax arrays (jit-safe: static shapes).
  """
  xp = jnp if isinstance(text_ids, jax.Array) else np
  ids = xp.asarray(text_ids)
  t = ids.shape[-1]
  is_quote = (ids == _QUOTES[0]) | (ids == _QUOTES[1])
  alnum = _is_alnum(ids)
  false = xp.zeros_like(alnum[..., :1])
  prev_alnum = xp.concatenate([false, alnum[..., :-1]], axis=-1)
  next_alnum = xp.concatenate([alnum[..., 1:], false], axis=-1)
  delim = is_quote & ~(prev_alnum & next_alnum)
  # Text ends at the first PAD/EOS: an unclosed span stops there.
  end = (ids == PAD) | (ids == EOS)
  before_end = xp.cumsum(end.astype(np.int32), axis=-1) == 0
  inside = (xp.cumsum(delim.astype(np.int32), axis=-1) % 2 == 1) & ~delim & before_end
  pos = xp.arange(t, dtype=np.int32)
  last_delim = _cummax(xp, xp.where(delim, pos, -1))
  stop = delim | end
  next_stop = _cummax(xp, xp.where(stop, -pos, -t)[..., ::-1])[..., ::-1] * -1
  from_start = xp.where(inside, pos - last_delim - 1, -1)
  from_end = xp.where(inside, next_stop - pos - 1, -1)
  return from_start.astype(np.int32), from_end.astype(np.int32)


def _cummax(xp, x):
  if xp is np:
    return np.maximum.accumulate(x, axis=-1)
  return jax.lax.cummax(x, axis=x.ndim - 1)
