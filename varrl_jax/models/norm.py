"""GroupNorm with flax's parameters and numbers, reduced per channel first.

``flax.linen.GroupNorm`` reduces x [B, H, W, C] viewed as [B, H, W, G, C/G]
over (H, W, C/G) at once. XLA-CPU runs that reduction slowly on the
tokenizer's decoder (channels-last, 32-64 channels): this module sums over
(H, W) per channel first, a reduction over the leading axes that keeps the
channel axis contiguous, then over the C/G channels of each group, and
normalises with one per-(row, channel) scale and shift. On tiny's decoder
(batch 8) the decode took 50 ms instead of 53, and 47 instead of 52 with
the narrow output conv of `models/conv.py` (one run, 2-core host,
2026-12-06); ``benchmarks/sampling.py`` measures the whole sampler.

Same parameter names, shapes and initialisers as ``nn.GroupNorm`` (scale
ones, bias zeros, [C]; a module named ``GroupNorm_k`` in a compact parent,
as flax's), statistics in float32, ``use_fast_variance`` as flax: E[x^2] -
E[x]^2 clipped at 0, or the two-pass mean of (x - mean)^2.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jax import lax


class GroupNorm(nn.Module):
  """``nn.GroupNorm(num_groups, epsilon, dtype, use_fast_variance)`` over
  channels-last inputs [B, *spatial, C]."""

  num_groups: int = 32
  epsilon: float = 1e-6
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32
  use_fast_variance: bool = True

  @nn.compact
  def __call__(self, x):
    c, g = x.shape[-1], self.num_groups
    if c % g:
      raise ValueError(f'GroupNorm: {c} channels do not split into {g} groups')
    scale = self.param('scale', nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (c,), self.param_dtype)
    xf = x.astype(jnp.float32)
    spatial = tuple(range(1, x.ndim - 1))
    lead = (x.shape[0],) + (1,) * len(spatial)

    def group_mean(per_channel):  # [B, C] -> [B, C], each group's mean
      grouped = per_channel.reshape(x.shape[0], g, c // g).mean(-1, keepdims=True)
      return jnp.broadcast_to(grouped, (x.shape[0], g, c // g)).reshape(-1, c)

    mean = group_mean(jnp.mean(xf, spatial))
    centred = xf - mean.reshape(*lead, c)
    if self.use_fast_variance:
      var = jnp.maximum(0.0, group_mean(jnp.mean(xf * xf, spatial)) - mean * mean)
    else:
      var = group_mean(jnp.mean(jnp.square(centred), spatial))
    mul = lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32)
    y = centred * mul.reshape(*lead, c)
    y = y + bias.astype(jnp.float32)
    dtype = self.dtype or jnp.result_type(x.dtype, self.param_dtype)
    return y.astype(dtype)
