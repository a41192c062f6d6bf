"""Grid resizing between token scales as static interpolation matrices.

The residual quantizer and the sampler move features between grids of
different sizes at every scale. Doing it with constant matrices
(``out = R_h @ x @ R_w^T``) keeps it exact, differentiable, identical in the
sampler and the teacher-forced pass, and cheap on every backend (two small
einsums instead of gather-heavy resize kernels).

- ``area``: each output cell is the overlap-weighted mean of the input cells it
  covers (fractional overlaps for non-integer ratios); used to go coarse.
- ``bicubic``: Keys cubic convolution (a = -0.75, as torch), half-pixel
  centres, clamped borders; used to go fine. Checked against torch's
  ``F.interpolate(mode='bicubic', align_corners=False)`` (no antialias) for
  the VAR grids 1..13 -> 16 and -> 8, up and down: the float32 matrices are
  identical (tests/models/test_var_vqvae.py), so no torch-specific kind.
- ``torch_area``: torch's ``F.interpolate(mode='area')``, i.e. adaptive
  average pooling: output cell o is the plain mean of input cells
  floor(o n_in / n_out) .. ceil((o + 1) n_in / n_out) - 1, whole cells
  only (16 -> 10: cell 1 averages inputs 1, 2, 3 by 1/3 each, where
  ``area`` weighs them 0.25, 0.625, 0.125). The official VAR tokenizer
  (`varrl_jax.models.var_official`) uses it.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np


@functools.cache
def area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] row-stochastic matrix of fractional overlaps."""
  m = np.zeros((n_out, n_in), dtype=np.float64)
  scale = n_in / n_out
  for o in range(n_out):
    lo, hi = o * scale, (o + 1) * scale
    for i in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
      overlap = min(hi, i + 1) - max(lo, i)
      if overlap > 0:
        m[o, i] = overlap
  m /= m.sum(axis=1, keepdims=True)
  return m.astype(np.float32)


@functools.cache
def torch_area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] adaptive-average-pooling matrix (torch's 'area').

  Row o is uniform over [start, end) with torch's integer bounds
  start = floor(o n_in / n_out), end = ceil((o + 1) n_in / n_out).
  """
  m = np.zeros((n_out, n_in), dtype=np.float64)
  for o in range(n_out):
    start = (o * n_in) // n_out
    end = -((-(o + 1) * n_in) // n_out)
    m[o, start:end] = 1.0 / (end - start)
  return m.astype(np.float32)


def _cubic(x: np.ndarray, a: float = -0.75) -> np.ndarray:
  x = np.abs(x)
  w = np.zeros_like(x)
  near, far = x <= 1, (x > 1) & (x < 2)
  w[near] = (a + 2) * x[near] ** 3 - (a + 3) * x[near] ** 2 + 1
  w[far] = a * x[far] ** 3 - 5 * a * x[far] ** 2 + 8 * a * x[far] - 4 * a
  return w


@functools.cache
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] bicubic interpolation matrix (rows sum to 1)."""
  m = np.zeros((n_out, n_in), dtype=np.float64)
  for o in range(n_out):
    centre = (o + 0.5) * n_in / n_out - 0.5
    base = int(np.floor(centre))
    taps = np.arange(base - 1, base + 3)
    weights = _cubic(centre - taps)
    for t, w in zip(np.clip(taps, 0, n_in - 1), weights):
      m[o, t] += w
  m /= m.sum(axis=1, keepdims=True)
  return m.astype(np.float32)


def resize(x_bhwc: jnp.ndarray, size: tuple[int, int], kind: str) -> jnp.ndarray:
  """Resizes [B, h, w, C] to [B, *size, C] with the static matrices above."""
  h_in, w_in = x_bhwc.shape[1], x_bhwc.shape[2]
  if (h_in, w_in) == tuple(size):
    return x_bhwc
  make = {
    'area': area_matrix,
    'bicubic': bicubic_matrix,
    'torch_area': torch_area_matrix,
  }[kind]
  r_h = jnp.asarray(make(h_in, size[0]), dtype=x_bhwc.dtype)
  r_w = jnp.asarray(make(w_in, size[1]), dtype=x_bhwc.dtype)
  return jnp.einsum('oh,bhwc,pw->bopc', r_h, x_bhwc, r_w)
