"""Multi-scale residual VQ-VAE tokenizer (VAR style).

An image x is encoded to a latent f [B, h, w, C] (h = H / downsample). Residual
quantization over the scale schedule (h_s, w_s), s = 0..S-1, with one shared
codebook E [V, C]:

    f_rest = f, f_hat = 0
    for s:  z_s  = area(f_rest, (h_s, w_s))
            r_s  = argmin_v ||z_s - E_v||^2                (the tokens of scale s)
            h_s  = phi_s(bicubic(E[r_s], (h, w)))
            f_hat += h_s,  f_rest -= h_s

``phi_s(x) = (1 - rho) x + rho conv3x3_s(x)`` is the per-scale refiner of VAR
(rho = ``phi_ratio``); ``phi_count`` refiners are shared across scales by
relative depth. The decoder maps f_hat to pixel logits (BCE-with-logits: text
images are mostly white and an MSE/sigmoid decoder collapses to white).
Training uses the straight-through estimator ``f + sg(f_hat - f)`` and the VQ
loss ``mean_s [ beta ||sg(f_hat_s) - f||^2 + ||f_hat_s - sg(f)||^2 ]``.

Encoder and decoder change resolution with space-to-depth / depth-to-space and
3x3 convolutions: on XLA-CPU strided and transposed convolutions were ~10x
slower.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from varrl_jax.models import conv as conv_lib
from varrl_jax.models import resize
from varrl_jax.models.norm import GroupNorm
from varrl_jax.models.schedule import ScaleSchedule


def _groups(channels: int) -> int:
  for g in (32, 16, 8, 4, 2, 1):
    if channels % g == 0:
      return g
  return 1


def make_conv(features: int, kernel: int, dtype, weight_grad: str) -> nn.Conv:
  """A SAME-padded square convolution through `conv.for_conv` (same
  parameters as ``nn.Conv``): on CPU a 3-channel output conv as a matmul,
  and with ``weight_grad='matmul'`` the patch-matmul weight gradient."""
  return nn.Conv(
    features,
    (kernel, kernel),
    padding='SAME',
    dtype=dtype,
    conv_general_dilated=conv_lib.for_conv(weight_grad),
  )


def space_to_depth(x: jnp.ndarray, r: int = 2) -> jnp.ndarray:
  b, h, w, c = x.shape
  x = x.reshape(b, h // r, r, w // r, r, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // r, w // r, r * r * c)


def depth_to_space(x: jnp.ndarray, r: int = 2) -> jnp.ndarray:
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, r, r, c // (r * r))
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * r, w * r, c // (r * r))


class ResBlock(nn.Module):
  channels: int
  dtype: jnp.dtype = jnp.float32
  weight_grad: str = 'xla'

  @nn.compact
  def __call__(self, x):
    conv = lambda c, k=3: make_conv(c, k, self.dtype, self.weight_grad)  # noqa: E731
    h = nn.silu(GroupNorm(_groups(x.shape[-1]), dtype=self.dtype)(x))
    h = conv(self.channels)(h)
    h = nn.silu(GroupNorm(_groups(self.channels), dtype=self.dtype)(h))
    h = conv(self.channels)(h)
    if x.shape[-1] != self.channels:
      x = conv(self.channels, 1)(x)
    return x + h


class Encoder(nn.Module):
  channels: tuple[int, ...]
  num_res_blocks: int
  latent_dim: int
  dtype: jnp.dtype = jnp.float32
  weight_grad: str = 'xla'

  @nn.compact
  def __call__(self, x):
    conv = lambda c: make_conv(c, 3, self.dtype, self.weight_grad)  # noqa: E731
    x = conv(self.channels[0])(x)
    for level in range(len(self.channels) - 1):
      for _ in range(self.num_res_blocks):
        x = ResBlock(self.channels[level], self.dtype, self.weight_grad)(x)
      x = space_to_depth(x)
      x = conv(self.channels[level + 1])(x)
    for _ in range(self.num_res_blocks):
      x = ResBlock(self.channels[-1], self.dtype, self.weight_grad)(x)
    x = nn.silu(GroupNorm(_groups(x.shape[-1]), dtype=self.dtype)(x))
    return conv(self.latent_dim)(x)


class Decoder(nn.Module):
  channels: tuple[int, ...]
  num_res_blocks: int
  out_channels: int = 3
  dtype: jnp.dtype = jnp.float32
  weight_grad: str = 'xla'

  @nn.compact
  def __call__(self, f):
    conv = lambda c, dtype=self.dtype: make_conv(c, 3, dtype, self.weight_grad)  # noqa: E731
    x = conv(self.channels[-1])(f)
    for _ in range(self.num_res_blocks):
      x = ResBlock(self.channels[-1], self.dtype, self.weight_grad)(x)
    for level in reversed(range(len(self.channels) - 1)):
      x = conv(4 * self.channels[level])(x)
      x = depth_to_space(x)
      for _ in range(self.num_res_blocks):
        x = ResBlock(self.channels[level], self.dtype, self.weight_grad)(x)
    x = nn.silu(GroupNorm(_groups(x.shape[-1]), dtype=self.dtype)(x))
    x = conv(self.out_channels, jnp.float32)(x)
    return x.astype(jnp.float32)


class Phi(nn.Module):
  """phi(x) = (1 - rho) x + rho conv3x3(x)."""

  ratio: float
  weight_grad: str = 'xla'

  @nn.compact
  def __call__(self, x):
    conv = make_conv(x.shape[-1], 3, None, self.weight_grad)
    return (1.0 - self.ratio) * x + self.ratio * conv(x)


class MultiScaleVQVAE(nn.Module):
  """The tokenizer. Images are float in [0, 1], [B, H, W, 3]."""

  schedule: ScaleSchedule
  channels: tuple[int, ...]
  num_res_blocks: int
  latent_dim: int
  codebook_size: int
  phi_count: int
  phi_ratio: float
  beta: float
  dtype: jnp.dtype = jnp.float32
  # How convolution weight gradients are computed ('matmul' | 'xla'; see
  # `conv`): the same parameters and numbers up to rounding.
  weight_grad: str = 'xla'

  def setup(self):
    self.encoder = Encoder(
      self.channels, self.num_res_blocks, self.latent_dim, self.dtype, self.weight_grad
    )
    self.decoder = Decoder(
      self.channels, self.num_res_blocks, 3, self.dtype, self.weight_grad
    )
    self.codebook = self.param(
      'codebook',
      nn.initializers.uniform(scale=2.0 / self.codebook_size),
      (self.codebook_size, self.latent_dim),
    )
    count = self.phi_count if self.phi_count > 0 else self.schedule.num_scales
    self.phis = [Phi(self.phi_ratio, self.weight_grad) for _ in range(count)]

  def _phi_for_scale(self, s: int) -> Phi:
    count, num = len(self.phis), self.schedule.num_scales
    index = 0 if num == 1 else round(s / (num - 1) * (count - 1))
    return self.phis[index]

  def encode(self, images):
    """[B, H, W, 3] in [0, 1] -> latent f [B, h, w, C]."""
    return self.encoder(images * 2.0 - 1.0).astype(jnp.float32)

  def decode(self, f_hat):
    """f_hat [B, h, w, C] -> pixel logits [B, H, W, 3]."""
    return self.decoder(f_hat)

  def lookup(self, z):
    """Nearest codebook entry of every vector: [..., C] -> int32 [...]."""
    e = self.codebook
    d = jnp.sum(z * z, axis=-1, keepdims=True) - 2.0 * z @ e.T + jnp.sum(e * e, axis=-1)
    return jnp.argmin(d, axis=-1).astype(jnp.int32)

  def scale_residual(self, ids_bhw, s: int):
    """h_s = phi_s(bicubic(E[r_s])) at the latent size, [B, h, w, C]."""
    q = jnp.take(self.codebook, ids_bhw, axis=0)
    q = resize.resize(q, self.schedule.latent_size, 'bicubic')
    return self._phi_for_scale(s)(q)

  def quantize(self, f):
    """Residual quantization; returns (f_hat_st, ids per scale, vq_loss, f_hat)."""
    f_hat = jnp.zeros_like(f)
    f_rest = f
    ids, loss = [], 0.0
    for s, grid in enumerate(self.schedule.grids):
      z = resize.resize(f_rest, grid, 'area')
      # The vectors the codebook is matched against; pretraining restarts dead
      # codes from them (a no-op unless 'intermediates' is mutable).
      self.sow('intermediates', 'residuals', jax.lax.stop_gradient(z))
      r = self.lookup(jax.lax.stop_gradient(z))
      h = self.scale_residual(r, s)
      f_hat = f_hat + h
      f_rest = f_rest - h
      ids.append(r)
      loss = (
        loss
        + self.beta * jnp.mean((jax.lax.stop_gradient(f_hat) - f) ** 2)
        + jnp.mean((f_hat - jax.lax.stop_gradient(f)) ** 2)
      )
    loss = loss / self.schedule.num_scales
    f_hat_st = f + jax.lax.stop_gradient(f_hat - f)
    return f_hat_st, ids, loss, f_hat

  def __call__(self, images):
    """Training forward: (pixel logits, vq_loss, ids per scale)."""
    f = self.encode(images)
    f_hat_st, ids, vq_loss, _ = self.quantize(f)
    return self.decode(f_hat_st), vq_loss, ids

  def encode_to_scales(self, images):
    """[B, H, W, 3] in [0, 1] -> list of int32 [B, h_s, w_s]."""
    return self.quantize(self.encode(images))[1]

  def fhat_from_scales(self, ids):
    """sum_s h_s for a list of per-scale ids."""
    f_hat = 0.0
    for s, r in enumerate(ids):
      f_hat = f_hat + self.scale_residual(r, s)
    return f_hat

  def decode_from_scales(self, ids):
    """List of [B, h_s, w_s] ids -> pixel logits [B, H, W, 3]."""
    return self.decode(self.fhat_from_scales(ids))


def build_tokenizer(config: ml_collections.ConfigDict) -> MultiScaleVQVAE:
  """The tokenizer module from the full config (``config.tokenizer``)."""
  tc = config.tokenizer
  schedule = ScaleSchedule.create(config.scales, config.image_size, tc.downsample)
  levels = len(tc.channels) - 1
  if 2**levels != tc.downsample:
    raise ValueError(
      f'config.tokenizer.channels has {len(tc.channels)} levels, which downsample '
      f'by {2**levels}, but config.tokenizer.downsample={tc.downsample} '
      f'(need log2(downsample) + 1 = {int(math.log2(tc.downsample)) + 1} levels)'
    )
  return MultiScaleVQVAE(
    schedule=schedule,
    channels=tuple(tc.channels),
    num_res_blocks=tc.num_res_blocks,
    latent_dim=tc.latent_dim,
    codebook_size=tc.codebook_size,
    phi_count=tc.phi_count,
    phi_ratio=tc.phi_ratio,
    beta=tc.beta,
    dtype=jnp.dtype(tc.dtype),
    weight_grad=conv_lib.resolve_weight_grad(tc.conv_weight_grad),
  )


def to_uint8(logits: jnp.ndarray) -> jnp.ndarray:
  """Decoder logits -> uint8 RGB."""
  return jnp.clip(jnp.round(jax.nn.sigmoid(logits) * 255.0), 0, 255).astype(jnp.uint8)
