"""Image grids with captions, written as PNG (PIL only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from varrl_jax import fs


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1 has no sized default font
    return ImageFont.load_default()


def make_grid(
  images: np.ndarray,
  captions: Sequence[str] | None = None,
  columns: int = 4,
  scale: int = 1,
  caption_lines: int = 2,
) -> Image.Image:
  """uint8 [N, H, W, 3] -> one PIL image, captions (one per image) underneath.

  ``scale`` enlarges small images (nearest) so captions stay readable.
  Captions may hold several lines separated by newlines.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(
      f'expected uint8 [N, H, W, 3] images, got {images.dtype} {images.shape}'
    )
  n, h, w, _ = images.shape
  h, w = h * scale, w * scale
  columns = max(1, min(columns, n))
  rows = (n + columns - 1) // columns
  line = 12
  cap_h = line * caption_lines + 4 if captions else 0
  width = max(w, 160 if captions else w)
  grid = Image.new('RGB', (columns * (width + 4), rows * (h + cap_h + 4)), 'white')
  draw = ImageDraw.Draw(grid)
  font = _font(10)
  for i in range(n):
    r, c = divmod(i, columns)
    x0, y0 = c * (width + 4) + 2, r * (h + cap_h + 4) + 2
    tile = Image.fromarray(images[i]).resize((w, h), Image.NEAREST)
    grid.paste(tile, (x0, y0))
    if captions:
      for j, text in enumerate(str(captions[i]).split('\n')[:caption_lines]):
        draw.text((x0, y0 + h + 2 + j * line), text[:40], fill='black', font=font)
  return grid


def save_grid(path: str, images: np.ndarray, captions=None, **kw) -> str:
  """Writes `make_grid(...)` to ``path`` (parents created); returns the path."""
  fs.makedirs(fs.dirname(path))
  fs.save_image(path, make_grid(images, captions, **kw))
  return path
