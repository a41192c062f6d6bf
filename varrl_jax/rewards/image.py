"""Rewards computed from the pixels alone, on the host: JPEG file size.

DDPO's (Black et al. 2023) two toy tasks: each image is encoded by Pillow as
JPEG at quality 95 (Pillow's defaults otherwise: 4:2:0 chroma subsampling,
no optimized Huffman tables), and

- ``jpeg_compressibility`` scores ``-(size in kB)``,
- ``jpeg_incompressibility`` scores ``+(size in kB)``,

with kB = 1000 bytes. What this measures is the number of bytes the
encoder needs: flat, smooth, low-detail images are small and noisy,
high-frequency ones large. It knows nothing about the prompt, the class or
whether the image is any good, so a policy optimizing it learns to draw
blank or noisy pictures; use it to test the RL machinery, or as a small
regularizer next to a real reward. No weights, deterministic for a given
libjpeg.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from varrl_jax.rewards import api

QUALITY = 95


def jpeg_kilobytes(images: np.ndarray, quality: int = QUALITY) -> np.ndarray:
  """JPEG size in kB (1000 bytes) of each uint8 [N, H, W, 3] image, float32 [N]."""
  sizes = []
  for image in np.asarray(images, np.uint8):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format='JPEG', quality=quality)
    sizes.append(buffer.tell() / 1000)
  return np.asarray(sizes, np.float32)


class JpegSize(api.Reward):
  """``sign * (JPEG size in kB)``: sign -1 is compressibility, +1 its opposite."""

  def __init__(self, sign: float):
    if sign not in (-1.0, 1.0):
      raise ValueError(f'sign must be -1 or +1, got {sign}')
    self.sign = sign
    self.name = 'jpeg_compressibility' if sign < 0 else 'jpeg_incompressibility'

  def score(self, images, prompts, targets) -> np.ndarray:
    del prompts, targets
    return np.float32(self.sign) * jpeg_kilobytes(images)
