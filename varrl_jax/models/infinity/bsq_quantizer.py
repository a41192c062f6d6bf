"""Infinity's binary spherical quantizer (BSQ) and its multi-scale residual loop.

A latent f [B, h, w, d] (the encoder output; d = 32 for 2B, 14 for 8B) is
coded over the VAE grids (h_s, w_s), s = 0..S-1, the last one (h, w):

    cum = 0
    for s:  r_s = area(f - cum, (h_s, w_s))          (none at s = S-1)
            z = r_s / |r_s|                          (per cell, over d)
            b_s = [z > 0]                            bits in {0, 1}^d
            q_s = z + (sign(z) / sqrt(d) - z)        (their straight-through)
            cum = cum + up(q_s, (h, w))
            x_{s+1} = up(cum, (h_{s+1}, w_{s+1}))    the next scale's input

which is their trainer's ``BitwiseSelfCorrection.flip_requant`` without
noise (``bitwise_self_correction.py``); ``MultiScaleBSQ.forward`` keeps a
running residual instead of f - cum, the same bits in exact arithmetic.
``area`` is torch's 'area' (adaptive average pooling), ``up`` their
'trilinear' at t = 1, i.e. bilinear with half-pixel centres and no antialias
(also when it shrinks: x_{s+1} is a 2-tap bilinear sample of cum).

A sampled bit token maps back to its code (``lfq.indices_to_codes(...,
'bit_label')``): c = (2 b - 1) / sqrt(d), then c / |c| (a no-op up to
rounding). Their sampler sums ``up(c_s, (h, w))`` into ``summed_codes`` (the
f_hat the decoder takes) and feeds ``up(summed_codes, grid_{s+1})`` to the
transformer (``Infinity.autoregressive_infer_cfg``); it never uses the
quantizer's 'area' ``var_input``.

8B's ``apply_spatial_patchify``: the transformer's grids are half the VAE's
per side and a token holds the 2x2 VAE cells' bits, channel k = 4 c + 2 i + j
(torch's pixel_shuffle / pixel_unshuffle), so tokens are [h, w, 4d].

All resizes are static matrices applied with ``precision='highest'`` (the
bits are signs of resized residuals; TPU's default bf16 passes would flip
some).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from varrl_jax.models import resize

Grid = tuple[int, int]


@functools.cache
def torch_bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in]: torch's linear interpolation along one axis
  (align_corners=False, no antialias), weights formed in float32 as theirs:
  src = max(n_in / n_out * (o + 0.5) - 0.5, 0), taps floor(src) and the next
  (clamped), weights 1 - frac and frac.

  The scale n_in / n_out is a float32; src is rounded to float32 once, after
  an exact multiply-add (torch's CPU kernel is compiled with a fused
  multiply-add: 16 -> 15 gives src = 7.5000005 there, not 7.5).
  """
  m = np.zeros((n_out, n_in), np.float32)
  scale = float(np.float32(n_in) / np.float32(n_out))
  for o in range(n_out):
    src = np.float32(max(scale * (o + 0.5) - 0.5, 0.0))  # exact in float64
    i0 = min(int(np.floor(src)), n_in - 1)
    i1 = i0 + (1 if i0 < n_in - 1 else 0)
    frac = np.float32(min(max(src - np.float32(i0), 0), 1))
    m[o, i0] += np.float32(1) - frac
    m[o, i1] += frac
  return m


def _apply(x_bhwc, r_h: np.ndarray, r_w: np.ndarray):
  # Width first, then height: the order of torch's separable kernel.
  x = jnp.einsum('pw,bhwc->bhpc', jnp.asarray(r_w), x_bhwc, precision='highest')
  return jnp.einsum('oh,bhpc->bopc', jnp.asarray(r_h), x, precision='highest')


def bilinear(x_bhwc: jnp.ndarray, size: Grid) -> jnp.ndarray:
  """Their 'trilinear' at t = 1: [B, h, w, C] -> [B, *size, C] (identity at
  the same size)."""
  h, w = x_bhwc.shape[1:3]
  if (h, w) == tuple(size):
    return x_bhwc
  return _apply(
    x_bhwc, torch_bilinear_matrix(h, size[0]), torch_bilinear_matrix(w, size[1])
  )


def area(x_bhwc: jnp.ndarray, size: Grid) -> jnp.ndarray:
  """torch's 'area' (adaptive average pooling): [B, h, w, C] -> [B, *size, C]."""
  h, w = x_bhwc.shape[1:3]
  if (h, w) == tuple(size):
    return x_bhwc
  make = resize.torch_area_matrix
  return _apply(x_bhwc, make(h, size[0]), make(w, size[1]))


def _l2norm(x):
  # F.normalize: x / max(|x|, 1e-12) over the last axis.
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, 1e-12)


def quantize(z_bhwd: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Their ``BSQ.forward`` (new_quant): (bits int32 [B, h, w, d], q float32).

  z <- z / |z|; bits = [z > 0]; q = z + (s sign(z) - z), s = 1 / sqrt(d)
  (sign(0) = -1), the straight-through value as their forward computes it.
  """
  z = _l2norm(z_bhwd.astype(jnp.float32))
  s = np.float32(1.0 / np.sqrt(z.shape[-1]))
  zhat = jnp.where(z > 0, s, -s)
  q = z + (zhat - z)
  return (q > 0).astype(jnp.int32), q


def bits_to_codes(bits_bhwd: jnp.ndarray) -> jnp.ndarray:
  """Bits in {0, 1} [..., d] -> codes (2 b - 1) / sqrt(d), l2-normalized, f32."""
  s = np.float32(1.0 / np.sqrt(bits_bhwd.shape[-1]))
  return _l2norm(jnp.where(bits_bhwd > 0, s, -s))


def unpatchify_bits(tokens_bhwk: jnp.ndarray) -> jnp.ndarray:
  """[B, h, w, 4d] -> [B, 2h, 2w, d] (torch's pixel_shuffle(., 2) in NHWC)."""
  b, h, w, k = tokens_bhwk.shape
  x = tokens_bhwk.reshape(b, h, w, k // 4, 2, 2)
  return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, 2 * h, 2 * w, k // 4)


def patchify(x_bhwd: jnp.ndarray) -> jnp.ndarray:
  """[B, 2h, 2w, d] -> [B, h, w, 4d] (torch's pixel_unshuffle(., 2) in NHWC)."""
  b, h2, w2, d = x_bhwd.shape
  x = x_bhwd.reshape(b, h2 // 2, 2, w2 // 2, 2, d)
  return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h2 // 2, w2 // 2, 4 * d)


def tokens_to_vae_bits(tokens_bhwk: jnp.ndarray, apply_spatial_patchify: bool):
  """A scale's sampled bits as the transformer holds them -> the VAE grid's."""
  return unpatchify_bits(tokens_bhwk) if apply_spatial_patchify else tokens_bhwk


def scale_residual(
  tokens_bhwk: jnp.ndarray, latent_hw: Grid, apply_spatial_patchify: bool = False
) -> jnp.ndarray:
  """One scale's contribution to f_hat: up(codes(bits), latent), [B, H, W, d].

  ``tokens_bhwk``: the scale's bits on the transformer grid, [B, h, w, d]
  (or [B, h, w, 4d] with patchify).
  """
  bits = tokens_to_vae_bits(tokens_bhwk, apply_spatial_patchify)
  return bilinear(bits_to_codes(bits), latent_hw)


def next_scale_input(
  f_hat_bhwd: jnp.ndarray, vae_grid: Grid, apply_spatial_patchify: bool = False
) -> jnp.ndarray:
  """The transformer's input for the scale on VAE grid ``vae_grid``:
  up(f_hat, vae_grid), flattened row-major, [B, n, d] (patchify: [B, n/4, 4d],
  n = h w of ``vae_grid``). Before their ``word_embed``."""
  x = bilinear(f_hat_bhwd, vae_grid)
  if apply_spatial_patchify:
    x = patchify(x)
  return x.reshape(x.shape[0], -1, x.shape[-1])


def fhat_from_tokens(
  tokens: list[jnp.ndarray], latent_hw: Grid, apply_spatial_patchify: bool = False
) -> jnp.ndarray:
  """Their sampler's ``summed_codes``: sum_s up(codes(b_s), latent), [B, H, W, d]."""
  f_hat = 0.0
  for t in tokens:
    f_hat = f_hat + scale_residual(t, latent_hw, apply_spatial_patchify)
  return f_hat


def encode_latent(
  f_bhwd: jnp.ndarray, vae_grids: tuple[Grid, ...], apply_spatial_patchify: bool = False
) -> tuple[list[jnp.ndarray], jnp.ndarray, list[jnp.ndarray]]:
  """The residual loop of the module docstring (their trainer's tokens).

  Args:
    f_bhwd: the encoder output [B, h, w, d], (h, w) = ``vae_grids[-1]``.
    vae_grids: the VAE grids (`schedules.vae_grids` of the transformer's).

  Returns:
    (bits per scale, int32 [B, h_s, w_s, d] on the VAE grid, or
    [B, h_s/2, w_s/2, 4d] tokens with patchify; f_hat = cum [B, h, w, d];
    the transformer inputs of scales 1..S-1, [B, n_s, D] each).
  """
  f = f_bhwd.astype(jnp.float32)
  latent = tuple(vae_grids[-1])
  if tuple(f.shape[1:3]) != latent:
    raise ValueError(f'latent grid {tuple(f.shape[1:3])} != last VAE grid {latent}')
  cum, bits, inputs = jnp.zeros_like(f), [], []
  for si, grid in enumerate(vae_grids):
    r = f - cum
    if si != len(vae_grids) - 1:
      r = area(r, grid)
    b, q = quantize(r)
    bits.append(patchify(b) if apply_spatial_patchify else b)
    cum = cum + bilinear(q, latent)
    if si != len(vae_grids) - 1:
      inputs.append(next_scale_input(cum, vae_grids[si + 1], apply_spatial_patchify))
  return bits, cum, inputs


def to_uint8(img_m11: jnp.ndarray) -> jnp.ndarray:
  """Their ``((img + 1) / 2).mul(255).to(torch.uint8)``: truncation, not
  rounding (RGB; their sampler then flips to BGR for cv2)."""
  return jnp.floor((img_m11.astype(jnp.float32) + 1.0) / 2.0 * 255.0).astype(jnp.uint8)
