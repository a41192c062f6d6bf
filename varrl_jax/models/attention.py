"""Block-causal grouped-query attention.

The sequence is ``[text | scale 0 | scale 1 | ... | scale S-1]``. Every
position carries a segment id: 0 for text, s + 1 for image scale s. A query
sees a key iff ``seg(key) <= seg(query)`` and the key is not padding: text
sees all of the (valid) text, and a token of scale s sees the text, every
coarser scale and all of its own scale. The mask is never materialised as a
[T, T] input array; it is built from the segment ids inside the kernel.

The implementation is chosen by ``config.model.attention``. ``plain`` (XLA
einsum + softmax) runs everywhere; at the paper's ~10k tokens its [T, T]
temporaries do not fit in TPU HBM, so pods need a Pallas kernel path with the
same mask (DESIGN.md section 4), which plugs in here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def block_causal_mask(
  q_seg: jnp.ndarray, k_seg: jnp.ndarray, k_valid: jnp.ndarray
) -> jnp.ndarray:
  """bool [B, Tq, Tk]: may query q attend to key k."""
  allowed = k_seg[None, :] <= q_seg[:, None]
  return allowed[None] & k_valid[:, None, :]


def plain_attention(
  q_bqhd: jnp.ndarray,
  k_bkgd: jnp.ndarray,
  v_bkgd: jnp.ndarray,
  q_seg: jnp.ndarray,
  k_seg: jnp.ndarray,
  k_valid: jnp.ndarray,
) -> jnp.ndarray:
  """softmax(q k^T / sqrt(D) + mask) v with H query heads over G kv heads.

  Shapes: q [B, Tq, H, D], k/v [B, Tk, G, D] (H divisible by G),
  q_seg int [Tq], k_seg int [Tk], k_valid bool [B, Tk]. Returns [B, Tq, H, D].
  Scores and softmax are float32 whatever the input dtype.
  """
  b, tq, h, d = q_bqhd.shape
  g = k_bkgd.shape[2]
  # Heads-major layouts make both products plain batched matmuls over (b, g)
  # with the r query heads of a kv head folded into the rows. On XLA:CPU
  # (B=8, T=580, H=4, G=2, D=64) a call took 106 ms against 235 ms when
  # contracting the [B, T, H, D] layout directly.
  q = q_bqhd.reshape(b, tq, g, h // g, d).transpose(0, 2, 3, 1, 4)  # [B, G, R, Tq, D]
  k = k_bkgd.transpose(0, 2, 1, 3)  # [B, G, Tk, D]
  v = v_bkgd.transpose(0, 2, 1, 3)
  scores = jnp.einsum('bgrqd,bgkd->bgrqk', q, k, preferred_element_type=jnp.float32)
  scores = scores * (d**-0.5)
  mask = block_causal_mask(q_seg, k_seg, k_valid)[:, None, None]
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum('bgrqk,bgkd->bgrqd', probs, v)  # [B, G, R, Tq, D]
  return out.transpose(0, 3, 1, 2, 4).reshape(b, tq, h, d)


def attention(impl: str, *args) -> jnp.ndarray:
  """Dispatches to the configured implementation (see module docstring)."""
  if impl == 'plain':
    return plain_attention(*args)
  raise ValueError(f"config.model.attention must be 'plain', got {impl!r}")
