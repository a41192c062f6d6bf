"""The convolutional encoder / decoder of Infinity's BSQ tokenizer in Flax.

FoundationVision/Infinity ``infinity/models/bsq_vae/flux_vqgan.py`` as
``bsq_vae/vae.py::vae_model`` builds it for inference (image, cnn_type '2d',
no attention anywhere: cnn_attention 'no'), NHWC inside. With ch_mult
(m_0, ..., m_{L-1}) and P = patch_size (2^(L-1) in every official model):

- Encoder: conv_in 3x3 -> level i: ``num_res_blocks`` ResnetBlocks to ch m_i,
  then (i < log2 P) a Downsample -> mid (ResnetBlock, ResnetBlock) ->
  GroupNorm, swish, conv_out 3x3 to d channels. f = enc(x), [B, H/P, W/P, d]
  in float32 (no quant_conv, no scale/shift factor at inference).
- Decoder: conv_in 3x3 -> mid -> level i = L-1 .. 0: ``num_res_blocks + 1``
  ResnetBlocks to ch m_i, then (1 <= i <= log2 P) an Upsample -> GroupNorm,
  swish, conv_out 3x3 to RGB; ``decode`` clamps to [-1, 1].
- ResnetBlock: ``nin(x) + conv2(swish(gn2(conv1(swish(gn1(x))))))``, nin a
  1x1 conv when the width changes. GroupNorm(32 groups, or 24 when C % 32 !=
  0, eps 1e-6, affine). Downsample: zero pad right/bottom by 1, 3x3 stride 2
  (VALID). Upsample: nearest 2x, 3x3 conv.

Parameter names follow their module tree (`vae_weights` maps the keys):
``encoder/down_0/block_1/conv1/kernel`` is their
``encoder.down.0.block.1.conv1.conv.weight``.

Presets: `INFINITY_2B_VAE` (infinity_vae_d32reg.pth: d = 32, ch 128,
ch_mult (1, 2, 4, 4, 4), stride 16) and `INFINITY_8B_VAE`
(infinity_vae_d56_f8_14_patchify.pth: d = 14, ch_mult (1, 2, 4, 4), stride
8, used with the 2x2 spatial patchify so a token has 4 d = 56 bits).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from varrl_jax.models.infinity import bsq_quantizer as bq
from varrl_jax.models.infinity import schedules
from varrl_jax.models.norm import GroupNorm
from varrl_jax.models.torch_layers import Resample
from varrl_jax.models.torch_layers import conv as _conv

INFINITY_2B_VAE = dict(
  codebook_dim=32, ch=128, ch_mult=(1, 2, 4, 4, 4), num_res_blocks=2, patch_size=16
)
INFINITY_8B_VAE = dict(
  codebook_dim=14,
  ch=128,
  ch_mult=(1, 2, 4, 4),
  num_res_blocks=2,
  patch_size=8,
  apply_spatial_patchify=True,
)


def _groups(channels: int) -> int:
  for g in (32, 24):
    if channels % g == 0:
      return g
  raise ValueError(f'GroupNorm: {channels} channels, not a multiple of 32 or 24')


def _norm(channels: int, name: str) -> GroupNorm:
  # float32 like their autocast (group_norm runs in float32); two-pass
  # variance as torch's.
  return GroupNorm(
    _groups(channels),
    epsilon=1e-6,
    use_fast_variance=False,
    dtype=jnp.float32,
    name=name,
  )


class ResnetBlock(nn.Module):
  out_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(_conv, self.out_channels, dtype=self.dtype)
    h = nn.silu(_norm(x.shape[-1], 'norm1')(x))
    h = nn.silu(_norm(self.out_channels, 'norm2')(conv(3, name='conv1')(h)))
    h = conv(3, name='conv2')(h)
    if x.shape[-1] != self.out_channels:
      x = conv(1, name='nin_shortcut')(x)
    return x + h


class Level(nn.Module):
  """Their ``down[i]`` / ``up[i]``: ResnetBlocks, then an optional resample."""

  out_channels: int
  num_blocks: int
  resample: str | None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for j in range(self.num_blocks):
      x = ResnetBlock(self.out_channels, self.dtype, name=f'block_{j}')(x)
    if self.resample is not None:
      x = Resample(self.resample, self.dtype, name=f'{self.resample}sample')(x)
    return x


class Mid(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = ResnetBlock(x.shape[-1], self.dtype, name='block_1')(x)
    return ResnetBlock(x.shape[-1], self.dtype, name='block_2')(x)


class Encoder(nn.Module):
  """[B, H, W, 3] -> [B, H / P, W / P, out_channels]."""

  ch: int
  ch_mult: tuple[int, ...]
  num_res_blocks: int
  out_channels: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    max_down = math.log2(self.patch_size)
    x = _conv(self.ch, 3, self.dtype, 'conv_in')(x)
    for i, mult in enumerate(self.ch_mult):
      x = Level(
        self.ch * mult,
        self.num_res_blocks,
        'down' if i < max_down else None,
        self.dtype,
        name=f'down_{i}',
      )(x)
    x = Mid(self.dtype, name='mid')(x)
    x = nn.silu(_norm(x.shape[-1], 'norm_out')(x))
    return _conv(self.out_channels, 3, self.dtype, 'conv_out')(x)


class Decoder(nn.Module):
  """[B, h, w, C] -> [B, h P, w P, 3]; level i is their ``up[i]`` (i = 0 the
  finest), run from the coarsest."""

  ch: int
  ch_mult: tuple[int, ...]
  num_res_blocks: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z):
    max_up = math.log2(self.patch_size)
    x = _conv(self.ch * self.ch_mult[-1], 3, self.dtype, 'conv_in')(z)
    x = Mid(self.dtype, name='mid')(x)
    for i in reversed(range(len(self.ch_mult))):
      x = Level(
        self.ch * self.ch_mult[i],
        self.num_res_blocks + 1,
        'up' if 1 <= i <= max_up else None,
        self.dtype,
        name=f'up_{i}',
      )(x)
    x = nn.silu(_norm(x.shape[-1], 'norm_out')(x))
    return _conv(3, 3, self.dtype, 'conv_out')(x)


class BSQVAE(nn.Module):
  """Infinity's BSQ tokenizer nets (`INFINITY_2B_VAE` / `INFINITY_8B_VAE`).

  The quantizer has no parameters (codebook_size = 2^d, so no projections;
  `bsq_quantizer` holds its functions). ``apply_spatial_patchify`` does not
  change the nets; it says how tokens map to VAE cells.
  """

  codebook_dim: int = 32
  ch: int = 128
  ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4)
  num_res_blocks: int = 2
  patch_size: int = 16
  apply_spatial_patchify: bool = False
  dtype: Any = jnp.float32

  @property
  def token_depth(self) -> int:
    """Bits per transformer token: d, or 4 d with the spatial patchify."""
    return self.codebook_dim * (4 if self.apply_spatial_patchify else 1)

  def setup(self):
    arch = (self.ch, tuple(self.ch_mult), self.num_res_blocks)
    self.encoder = Encoder(*arch, self.codebook_dim, self.patch_size, self.dtype)
    self.decoder = Decoder(*arch, self.patch_size, self.dtype)

  def __call__(self, img_m11):
    """decode(encode(x)) without quantization (initializes every parameter)."""
    return self.decode(self.encode(img_m11))

  def encode(self, img_m11):
    """[B, H, W, 3] in [-1, 1] -> f [B, H / P, W / P, d], float32."""
    return self.encoder(img_m11.astype(self.dtype)).astype(jnp.float32)

  def decode(self, f_hat_bhwd):
    """clamp(dec(f_hat), -1, 1), float32 [B, h P, w P, 3]."""
    img = self.decoder(f_hat_bhwd.astype(self.dtype))
    return jnp.clip(img.astype(jnp.float32), -1.0, 1.0)

  def encode_to_tokens(self, img_m11, grids: tuple[tuple[int, int], ...]):
    """Image -> `bsq_quantizer.encode_latent` over the transformer's
    ``grids``: (bit tokens per scale [B, h_s, w_s, token_depth], f_hat,
    the transformer inputs of scales 1..S-1 [B, n_s, token_depth])."""
    vae_grids = schedules.vae_grids(grids, self.apply_spatial_patchify)
    return bq.encode_latent(
      self.encode(img_m11), vae_grids, self.apply_spatial_patchify
    )

  def decode_tokens(self, tokens: list):
    """Bit tokens of every scale ([B, h_s, w_s, token_depth]) -> image
    [B, H, W, 3] in [-1, 1], through their sampler's ``summed_codes``."""
    h, w = tokens[-1].shape[1:3]
    k = 2 if self.apply_spatial_patchify else 1
    f_hat = bq.fhat_from_tokens(tokens, (k * h, k * w), self.apply_spatial_patchify)
    return self.decode(f_hat)
