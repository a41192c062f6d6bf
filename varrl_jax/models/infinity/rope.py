"""Infinity's 2-D rotary position embedding (``rope2d_normalized_by_hw=2``).

Every token of every scale gets a (row, column) position on one reference
grid (U_h, U_w): the last grid of the '1M' schedule of the image's aspect
ratio (64 x 64 at 1:1, 70 x 56 at h/w = 1.25; see
``varrl_jax.models.infinity.schedules``). A token at (r, c) of a scale with
grid (h, w) sits at

  p_h = round(r * U_h / h),   p_w = round(c * U_w / w)

(float32 products, ties to even, as their ``precompute_rope2d_freqs_grid``),
so all scales share one coordinate frame. With head width D and
``inv_freq[j] = base^(-4 j / D)``, j = 0 .. D/4 - 1, the angles of a token are
``theta = [p_h inv_freq, p_w inv_freq]`` (D/2 of them: the first half of the
head's pairs rotate with the row, the second half with the column), and each
adjacent pair (x_{2i}, x_{2i+1}) of q and k is rotated by theta_i:

  x'_{2i} = cos(theta_i) x_{2i} - sin(theta_i) x_{2i+1}
  x'_{2i+1} = sin(theta_i) x_{2i} + cos(theta_i) x_{2i+1}.

The tables are numpy constants of the static schedule.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

ROPE_BASE = 10000.0
ROPE_MAX_GRID = 128  # their max_height = max_width = 2048 // 16


def positions(
  grids: Sequence[tuple[int, int]], ref_grid: tuple[int, int]
) -> np.ndarray:
  """int32 [L, 2]: (p_h, p_w) of every token, scales concatenated row-major."""
  uh, uw = ref_grid
  out = []
  for h, w in grids:
    # float32 like their torch.arange(h) * (U_h / h), then round half to even.
    rows = np.round(np.arange(h, dtype=np.float32) * np.float32(uh / h))
    cols = np.round(np.arange(w, dtype=np.float32) * np.float32(uw / w))
    rr, cc = np.meshgrid(rows, cols, indexing='ij')
    out.append(np.stack([rr.reshape(-1), cc.reshape(-1)], -1))
  pos = np.concatenate(out).astype(np.int32)
  if pos.max() >= ROPE_MAX_GRID:
    raise ValueError(
      f'rope_grid {tuple(ref_grid)}: positions reach {int(pos.max())}, beyond '
      f'their {ROPE_MAX_GRID}-entry table'
    )
  return pos


def tables(
  grids: Sequence[tuple[int, int]],
  ref_grid: tuple[int, int],
  head_dim: int,
  base: float = ROPE_BASE,
) -> tuple[np.ndarray, np.ndarray]:
  """float32 (cos, sin), each [L, head_dim / 2]: the angles of every token."""
  if head_dim % 4:
    raise ValueError(f'head_dim={head_dim}: the 2-D RoPE needs a multiple of 4')
  half = head_dim // 2
  inv_freq = (
    1.0 / (base ** (np.arange(0, half, 2, dtype=np.float32) / np.float32(half)))
  ).astype(np.float32)
  pos = positions(grids, ref_grid).astype(np.float32)
  theta = np.concatenate([pos[:, :1] * inv_freq, pos[:, 1:] * inv_freq], axis=-1)
  return np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)


def apply(x_blhd, cos_ld, sin_ld):
  """Rotates adjacent pairs of x [B, L, H, D] by the angles [L, D/2]."""
  b, n, h, d = x_blhd.shape
  pairs = x_blhd.astype(jnp.float32).reshape(b, n, h, d // 2, 2)
  x0, x1 = pairs[..., 0], pairs[..., 1]
  cos = jnp.asarray(cos_ld)[None, :, None]
  sin = jnp.asarray(sin_ld)[None, :, None]
  out = jnp.stack([cos * x0 - sin * x1, sin * x0 + cos * x1], axis=-1)
  return out.reshape(b, n, h, d).astype(x_blhd.dtype)
