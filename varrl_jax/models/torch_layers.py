"""Layers shaped like torch's, shared by the official VAEs in Flax (VAR's
VQ-VAE, `var_official/vqvae.py`, and Infinity's BSQ VAE,
`infinity/bsq_vae.py`), NHWC: a Conv2d with torch's symmetric padding and
their taming-style down / up sampling."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from varrl_jax.models import conv as conv_lib


def conv(features: int, kernel: int, dtype, name: str, stride: int = 1, pad=None):
  """torch ``Conv2d(k, padding=k // 2)`` (or explicit ``pad``) as `nn.Conv`
  (on CPU the 3-channel output conv as one matmul: `conv.for_conv`)."""
  pad = ((kernel // 2, kernel // 2),) * 2 if pad is None else pad
  return nn.Conv(
    features,
    (kernel, kernel),
    (stride, stride),
    pad,
    dtype=dtype,
    name=name,
    conv_general_dilated=conv_lib.for_conv(),
  )


class Resample(nn.Module):
  """'down': pad (0, 1) right/bottom + 3x3 stride 2; 'up': nearest 2x + 3x3."""

  kind: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    if self.kind == 'down':
      return conv(c, 3, self.dtype, 'conv', stride=2, pad=((0, 1), (0, 1)))(x)
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return conv(c, 3, self.dtype, 'conv')(x)
