"""CLIP image preprocessing in JAX: what CLIPImageProcessor / open_clip do.

The reference pipeline (Hugging Face ``CLIPImageProcessor``, its PIL variant,
and open_clip's torchvision transform) on a uint8 image [H, W, 3]:

1. resize so the short side is S, the long side ``int(S * long / short)``,
   with PIL's bicubic filter (Keys a = -0.5, antialiased: when shrinking by
   f > 1 the kernel is stretched to support 2 f), one pass along the width,
   rounded to uint8, then one along the height, rounded to uint8;
2. centre crop S x S at ``top = int((H' - S) / 2)``, ``left`` likewise;
3. ``x / 255``, then ``(x - mean) / std`` per channel.

Here each pass is a static [out, in] matrix (rows of the crop only), applied
with an einsum, and the two roundings are kept, so the result equals PIL's up
to PIL's fixed-point weights (22 fractional bits): a pixel can land one uint8
level apart where the exact value is near a rounding boundary. Measured on
random and smooth images (tests/models/test_clip_preprocess.py): against
CLIPImageProcessorPil at most one level (1/255/std <= 0.0146 after
normalising) on under 0.5 % of the values (under 0.01 % at 224 from 256 or
1024); against CLIPImageProcessor (torchvision's uint8 kernel) at most two
levels (enlarging) on under 1 %; exact when no resize is needed.
open_clip crops at ``round((H' - S) / 2)``; it differs from the above by one
pixel only when ``H' - S`` is odd.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from varrl_jax.models.clip import CLIP_MEAN, CLIP_STD


def _pil_bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
  x = np.abs(x)
  return np.where(
    x < 1,
    ((a + 2) * x - (a + 3)) * x * x + 1,
    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0),
  )


@functools.cache
def pil_bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] float64 weights of PIL's bicubic resize (rows sum to 1).

  Output o is centred at c = (o + 0.5) n_in / n_out in input coordinates; with
  f = max(n_in / n_out, 1) it takes inputs i in [int(c - 2f + 0.5),
  int(c + 2f + 0.5)), weighted by k((i - c + 0.5) / f), normalised.
  """
  scale = n_in / n_out
  f = max(scale, 1.0)
  m = np.zeros((n_out, n_in))
  for o in range(n_out):
    centre = (o + 0.5) * scale
    lo = max(int(centre - 2 * f + 0.5), 0)
    hi = min(int(centre + 2 * f + 0.5), n_in)
    taps = np.arange(lo, hi)
    w = _pil_bicubic((taps - centre + 0.5) / f)
    m[o, lo:hi] = w / w.sum()
  return m


def resize_shape(height: int, width: int, size: int) -> tuple[int, int, int, int]:
  """(resized H', W', crop top, crop left) of the short-side resize to ``size``."""
  if min(height, width) < 1:
    raise ValueError(f'cannot resize an image of {height}x{width} pixels')
  short, long = sorted((height, width))
  new_long = int(size * long / short)
  new_h, new_w = (size, new_long) if height <= width else (new_long, size)
  return new_h, new_w, int((new_h - size) / 2), int((new_w - size) / 2)


def preprocess(
  images_nhwc,
  size: int,
  mean=CLIP_MEAN,
  std=CLIP_STD,
) -> jnp.ndarray:
  """uint8 images [N, H, W, 3] -> normalised float32 pixels [N, size, size, 3].

  Jittable (H, W static). An image already ``size x size`` passes unresized
  (PIL's weights are the identity there too).
  """
  x = jnp.asarray(images_nhwc).astype(jnp.float32)
  _, h, w, _ = x.shape
  new_h, new_w, top, left = resize_shape(h, w, size)
  if (new_h, new_w) != (h, w):
    r_w = pil_bicubic_matrix(w, new_w)[left : left + size].astype(np.float32)
    r_h = pil_bicubic_matrix(h, new_h)[top : top + size].astype(np.float32)
    hp = jnp.einsum('pw,nhwc->nhpc', r_w, x, precision='highest')
    hp = jnp.clip(jnp.floor(hp + 0.5), 0, 255)
    x = jnp.einsum('oh,nhpc->nopc', r_h, hp, precision='highest')
    x = jnp.clip(jnp.floor(x + 0.5), 0, 255)
  else:
    x = x[:, top : top + size, left : left + size]
  x = x / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
