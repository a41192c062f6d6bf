"""The multi-scale VQ-VAE of FoundationVision/VAR (``models/vqvae.py``,
``quant.py``, ``basic_vae.py``) in Flax, NHWC inside.

An image x in [-1, 1], [B, H, W, 3], is encoded to f = quant_conv(enc(x)),
[B, h, w, C] (h = H / 16 with ``ch_mult`` of 5 levels). Residual quantization
over the patch grids p_0 < ... < p_{S-1} = h with one codebook E [V, C]:

    f_rest = f, f_hat = 0
    for s:  z_s = area(f_rest, p_s)               (none at s = S-1)
            r_s = argmin_v (|z_s|^2 + |E_v|^2) - 2 z_s . E_v
            h_s = phi_{k(s)}(bicubic(E[r_s], h))  (no resize at s = S-1)
            f_hat += h_s,  f_rest -= h_s

with ``area`` torch's adaptive average pooling (`resize` kind
'torch_area'), ``phi_k(x) = (1 - rho) x + rho conv3x3_k(x)`` (rho =
|quant_resi|) and k(s) = `phi_index`. The decoder maps post_quant_conv(f_hat)
to pixels, clamped to [-1, 1]. The VAR transformer's input at scale s + 1 is
``area(f_hat_{<=s}, p_{s+1})`` (`next_scale_input`).

Blocks as theirs: GroupNorm(32, eps 1e-6); ResnetBlock
``nin(x) + conv2(silu(gn2(conv1(silu(gn1(x))))))``; single-head AttnBlock
``x + proj(softmax(q k^T / sqrt(C)) v)`` with q, k, v from one 1x1 conv;
Downsample zero-pads right and bottom by 1 then a stride-2 3x3 conv (VALID);
Upsample is nearest 2x then a 3x3 conv. Parameter names follow their module
tree (``encoder/down_0/block_1/conv1/kernel`` is their
``encoder.down.0.block.1.conv1.weight``; `vqvae_weights` maps the two).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from varrl_jax.models import resize
from varrl_jax.models.norm import GroupNorm
from varrl_jax.models.torch_layers import Resample
from varrl_jax.models.torch_layers import conv as _conv


def phi_index(si: int, num_scales: int, share_quant_resi: int) -> int:
  """k(s): which phi refines scale ``si`` (their PhiShared/PartiallyShared/
  NonShared ``__getitem__``), in their float64 arithmetic.

  K = share_quant_resi phis (0: one per scale, 1: a single shared one);
  ticks = linspace(1/(3K), 1 - 1/(3K), K) for K = 4, else
  linspace(1/(2K), 1 - 1/(2K), K); k = argmin_k |ticks_k - si / (S - 1)|.
  Some si / (S - 1) sit on a midpoint between two ticks in real arithmetic
  (S = 10, K = 4: 2/9); the float64 rounding of the same numpy expressions
  decides, as in theirs, and argmin takes the first of exact ties. Their
  division fails for S = 1; here it picks phi 0.
  """
  if share_quant_resi == 1:
    return 0
  k = share_quant_resi or num_scales
  if k == 4:
    ticks = np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k)
  else:
    ticks = np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)
  at = si / (num_scales - 1) if num_scales > 1 else 0.0
  return int(np.argmin(np.abs(ticks - at)).item())


def next_scale_input(f_hat_bhwc: jnp.ndarray, size: int | tuple[int, int]):
  """Their ``get_next_autoregressive_input``: area(f_hat, p_{s+1}),
  [B, h, w, C] -> [B, p, p, C] (torch_area; identity at p = h)."""
  size = (size, size) if isinstance(size, int) else tuple(size)
  return resize.resize(f_hat_bhwc, size, 'torch_area')


def _norm(dtype, name: str) -> GroupNorm:
  # Two-pass variance as torch's: the fast E[x^2] - E[x]^2 loses digits
  # when a group's mean is large against its spread.
  return GroupNorm(32, epsilon=1e-6, use_fast_variance=False, dtype=dtype, name=name)


class ResnetBlock(nn.Module):
  out_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(_conv, self.out_channels, dtype=self.dtype)
    h = conv(3, name='conv1')(nn.silu(_norm(self.dtype, 'norm1')(x)))
    h = conv(3, name='conv2')(nn.silu(_norm(self.dtype, 'norm2')(h)))
    if x.shape[-1] != self.out_channels:
      x = conv(1, name='nin_shortcut')(x)
    return x + h


class AttnBlock(nn.Module):
  """x + proj_out(softmax(q k^T C^-1/2) v), one head over the h w cells."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_bhwc):
    b, h, w, c = x_bhwc.shape
    qkv = _conv(3 * c, 1, self.dtype, 'qkv')(_norm(self.dtype, 'norm')(x_bhwc))
    q_bnc, k_bnc, v_bnc = jnp.split(qkv.reshape(b, h * w, 3 * c), 3, axis=-1)
    logits_bnm = jnp.einsum('bnc,bmc->bnm', q_bnc, k_bnc) * (int(c) ** -0.5)
    out_bnc = jnp.einsum('bnm,bmc->bnc', jax.nn.softmax(logits_bnm, -1), v_bnc)
    return x_bhwc + _conv(c, 1, self.dtype, 'proj_out')(out_bnc.reshape(b, h, w, c))


class Level(nn.Module):
  """``num_blocks`` ResnetBlocks (each followed by an AttnBlock if ``attn``),
  then an optional Resample ('down' / 'up'); their ``down[i]`` / ``up[i]``."""

  out_channels: int
  num_blocks: int
  attn: bool
  resample: str | None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for j in range(self.num_blocks):
      x = ResnetBlock(self.out_channels, self.dtype, name=f'block_{j}')(x)
      if self.attn:
        x = AttnBlock(self.dtype, name=f'attn_{j}')(x)
    if self.resample is not None:
      x = Resample(self.resample, self.dtype, name=f'{self.resample}sample')(x)
    return x


class Mid(nn.Module):
  using_attn: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = ResnetBlock(x.shape[-1], self.dtype, name='block_1')(x)
    if self.using_attn:
      x = AttnBlock(self.dtype, name='attn_1')(x)
    return ResnetBlock(x.shape[-1], self.dtype, name='block_2')(x)


class _Tower(nn.Module):
  """Fields shared by their Encoder and Decoder (``ddconfig``)."""

  ch: int
  ch_mult: tuple[int, ...]
  num_res_blocks: int
  out_channels: int
  using_sa: bool
  using_mid_sa: bool
  dtype: Any = jnp.float32

  def _out(self, x):
    x = nn.silu(_norm(self.dtype, 'norm_out')(x))
    return _conv(self.out_channels, 3, self.dtype, 'conv_out')(x)


class Encoder(_Tower):
  """[B, H, W, 3] -> [B, H / 2^(L-1), W / 2^(L-1), out_channels]."""

  @nn.compact
  def __call__(self, x):
    last = len(self.ch_mult) - 1
    x = _conv(self.ch, 3, self.dtype, 'conv_in')(x)
    level = functools.partial(Level, num_blocks=self.num_res_blocks, dtype=self.dtype)
    for i, mult in enumerate(self.ch_mult):
      attn, resample = self.using_sa and i == last, None if i == last else 'down'
      x = level(self.ch * mult, attn=attn, resample=resample, name=f'down_{i}')(x)
    return self._out(Mid(self.using_mid_sa, self.dtype, name='mid')(x))


class Decoder(_Tower):
  """[B, h, w, C] -> [B, h 2^(L-1), w 2^(L-1), out_channels]; level i is
  their ``up[i]`` (i = 0 the finest), run from the coarsest."""

  @nn.compact
  def __call__(self, z):
    last = len(self.ch_mult) - 1
    x = _conv(self.ch * self.ch_mult[last], 3, self.dtype, 'conv_in')(z)
    x = Mid(self.using_mid_sa, self.dtype, name='mid')(x)
    level = functools.partial(
      Level, num_blocks=self.num_res_blocks + 1, dtype=self.dtype
    )
    for i in reversed(range(len(self.ch_mult))):
      attn, resample = self.using_sa and i == last, None if i == 0 else 'up'
      x = level(
        self.ch * self.ch_mult[i], attn=attn, resample=resample, name=f'up_{i}'
      )(x)
    return self._out(x)


class Phi(nn.Module):
  """phi(x) = (1 - rho) x + rho conv3x3(x); their ``Phi(nn.Conv2d)``."""

  ratio: float

  @nn.compact
  def __call__(self, x):
    conv = _conv(x.shape[-1], 3, jnp.float32, 'conv')
    return x * (1.0 - self.ratio) + conv(x) * self.ratio


class VarVQVAE(nn.Module):
  """Their ``VQVAE`` (``vae_ch160v4096z32.pth`` at the defaults); images NHWC
  in [-1, 1], the latent side is ``patch_nums[-1]``. Quantization runs in
  float32 whatever ``dtype`` (theirs disables autocast there)."""

  vocab_size: int = 4096
  z_channels: int = 32
  ch: int = 160
  ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  using_sa: bool = True
  using_mid_sa: bool = True
  share_quant_resi: int = 4
  quant_resi: float = 0.5
  patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
  dtype: Any = jnp.float32

  @property
  def downsample(self) -> int:
    return 2 ** (len(self.ch_mult) - 1)

  @property
  def num_phis(self) -> int:
    """0 when |quant_resi| <= 1e-6: theirs then uses nn.Identity for phi."""
    if abs(self.quant_resi) <= 1e-6:
      return 0
    return self.share_quant_resi or len(self.patch_nums)

  def setup(self):
    arch = (self.ch, self.ch_mult, self.num_res_blocks)
    sa = (self.using_sa, self.using_mid_sa, self.dtype)
    self.encoder = Encoder(*arch, self.z_channels, *sa)
    self.decoder = Decoder(*arch, 3, *sa)
    self.quant_conv = _conv(self.z_channels, 3, self.dtype, None)
    self.post_quant_conv = _conv(self.z_channels, 3, self.dtype, None)
    # Their nn.Embedding: E [V, C], N(0, 1) at init.
    self.codebook = self.param(
      'codebook', nn.initializers.normal(1.0), (self.vocab_size, self.z_channels)
    )
    self.phi = [Phi(abs(self.quant_resi)) for _ in range(self.num_phis)]

  def __call__(self, img_m11):
    """Reconstruction (and, initializing, every parameter)."""
    f_hat = self.quantize_with_fhat(self.encode(img_m11))[1]
    if self.is_initializing():
      # Scales need not visit every phi (few scales, K = 4); theirs holds all.
      for phi in self.phi:
        phi(f_hat)
    return self.decode(f_hat)

  def encode(self, img_m11):
    """[B, H, W, 3] in [-1, 1] -> f = quant_conv(enc(x)), float32 [B, h, w, C]."""
    return self.quant_conv(self.encoder(img_m11)).astype(jnp.float32)

  def lookup(self, z_bhwc):
    """argmin_v (|z|^2 + |E_v|^2) - 2 z . E_v, their formula and order:
    [B, p, p, C] -> int32 [B, p, p]."""
    e_vc = self.codebook
    dot = jnp.einsum('bhwc,vc->bhwv', z_bhwc, e_vc, precision='highest')
    d = (jnp.sum(z_bhwc**2, -1, keepdims=True) + jnp.sum(e_vc**2, -1)) - 2.0 * dot
    return jnp.argmin(d, axis=-1).astype(jnp.int32)

  def _phi(self, si: int):
    if not self.phi:
      return lambda x: x
    return self.phi[phi_index(si, len(self.patch_nums), self.share_quant_resi)]

  def scale_residual(self, ids_bhw, si: int):
    """h_s = phi_{k(s)}(bicubic(E[r_s], h)), int [B, p, p] -> [B, h, h, C]."""
    q = jnp.take(self.codebook, ids_bhw, axis=0)
    side = self.patch_nums[-1]
    return self._phi(si)(resize.resize(q, (side, side), 'bicubic'))

  def quantize_with_fhat(self, f_bhwc):
    """Their ``f_to_idxBl_or_fhat``: (ids per scale, int32 [B, p_s, p_s];
    f_hat, [B, h, w, C])."""
    f = f_bhwc.astype(jnp.float32)
    side = self.patch_nums[-1]
    if f.shape[1:3] != (side, side):
      raise ValueError(f'latent {f.shape[1:3]} != last patch grid {(side, side)}')
    f_rest, f_hat, ids = f, jnp.zeros_like(f), []
    for si, pn in enumerate(self.patch_nums):
      r = self.lookup(resize.resize(f_rest, (pn, pn), 'torch_area'))
      h = self.scale_residual(r, si)
      f_hat = f_hat + h
      f_rest = f_rest - h
      ids.append(r)
    return ids, f_hat

  def quantize(self, f_bhwc) -> list[jnp.ndarray]:
    """f [B, h, w, C] -> ids per scale, int32 [B, p_s, p_s]."""
    return self.quantize_with_fhat(f_bhwc)[0]

  def encode_to_scales(self, img_m11) -> list[jnp.ndarray]:
    """Their ``img_to_idxBl`` (as [B, p_s, p_s] grids)."""
    return self.quantize(self.encode(img_m11))

  def fhat_from_scales(self, ids_list):
    """f_hat = sum_s h_s over the given scales (a prefix is fine)."""
    f_hat = 0.0
    for si, r in enumerate(ids_list):
      f_hat = f_hat + self.scale_residual(r, si)
    return f_hat

  def decode(self, f_hat_bhwc):
    """clamp(dec(post_quant_conv(f_hat)), -1, 1), float32 [B, H, W, 3]."""
    img = self.decoder(self.post_quant_conv(f_hat_bhwc.astype(self.dtype)))
    return jnp.clip(img.astype(jnp.float32), -1.0, 1.0)

  def decode_from_scales(self, ids_list):
    return self.decode(self.fhat_from_scales(ids_list))

  def next_input(self, f_hat_bhwc, si: int):
    """Transformer input of scale si + 1: area(f_hat, p_{si+1})."""
    return next_scale_input(f_hat_bhwc, self.patch_nums[si + 1])
