"""A picture of the propagated MP mask at every scale, over the image."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from varrl_jax.models.schedule import ScaleSchedule


def upsample_nearest(grid_mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """[h, w] -> [H, W]: every pixel takes the value of the cell it lies in."""
  h, w = grid_mask.shape
  rows = np.minimum((np.arange(size[0]) * h) // size[0], h - 1)
  cols = np.minimum((np.arange(size[1]) * w) // size[1], w - 1)
  return grid_mask[rows][:, cols]


def mask_panels(
  image: np.ndarray, mask_l: np.ndarray, schedule: ScaleSchedule, scale: int = 2
) -> Image.Image:
  """One row per scale: the image with that scale's mask in red and its grid size."""
  height, width = schedule.image_size
  panels = []
  for s, (h, w) in enumerate(schedule.grids):
    start, end = schedule.span(s)
    m = upsample_nearest(np.asarray(mask_l[start:end]).reshape(h, w), (height, width))
    tint = np.array([255, 0, 0], np.float32)
    over = (
      image.astype(np.float32) * (1 - 0.5 * m[..., None]) + tint * 0.5 * m[..., None]
    )
    tile = Image.fromarray(over.clip(0, 255).astype(np.uint8)).resize(
      (width * scale, height * scale), Image.NEAREST
    )
    panel = Image.new('RGB', (tile.width + 90, tile.height), 'white')
    panel.paste(tile, (90, 0))
    ImageDraw.Draw(panel).text(
      (4, 4),
      f'scale {s}\n{h}x{w}\ncover {float(np.mean(mask_l[start:end])):.2f}',
      fill='black',
    )
    panels.append(panel)
  out = Image.new('RGB', (panels[0].width, sum(p.height + 2 for p in panels)), 'white')
  y = 0
  for p in panels:
    out.paste(p, (0, y))
    y += p.height + 2
  return out
