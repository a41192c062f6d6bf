"""Mask Propagation (MP): focus the update on the tokens that draw the text.

The paper leaves MP underspecified; this is our definition.

1. Rasterize. The reward's text boxes (pixels of the generated image) mark
   the final token grid (h_S, w_S): cell (r, c) covers the pixels
   [r H / h_S, (r+1) H / h_S) x [c W / w_S, (c+1) W / w_S) and is 1 when that
   rectangle overlaps a box with positive area. ``dilation`` then grows the
   mask by that many cells (a square max filter).
2. Propagate fine -> coarse. The mask of scale s is the mask of scale s + 1
   pooled onto the coarser grid through the area-overlap matrix of
   `varrl_jax.models.resize`: ``'max'`` marks a coarse cell when any fine
   cell overlapping it (positive overlap area) is marked; ``'area'`` keeps the
   overlap-weighted fraction in [0, 1]. A coarse token decides the layout
   of everything finer beneath it, so it inherits the fine tokens' relevance.
3. Floor. ``mask = floor + (1 - floor) * mask`` keeps a little signal
   elsewhere (floor 0: none).

For a prefix update the K suffix branches of a prefix give K sets of boxes:
the prefix's mask is rasterized from their union (`union_over_branches`, the
element-wise max of per-branch masks, equals it for the 'max' rule when
every branch has boxes; the loop uses the union of boxes). An image
without any box gets ``empty`` ('ones': the full update, 'zeros': none):
without text there is no region to focus on.

Output: dense float32 [B, L] in the flattened scale order of the schedule.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from varrl_jax.models import resize
from varrl_jax.models.schedule import ScaleSchedule

Box = Sequence[float]  # (x0, y0, x1, y1) pixels


def rasterize(
  boxes: Sequence[Box],
  image_size: tuple[int, int],
  grid: tuple[int, int],
  dilation: int = 0,
) -> np.ndarray:
  """Boxes -> float32 [h, w] mask of the cells whose pixels overlap a box."""
  height, width = image_size
  h, w = grid
  mask = np.zeros((h, w), np.float32)
  cell_h, cell_w = height / h, width / w
  for box in boxes:
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = max(0.0, min(x0, x1)), min(float(width), max(x0, x1))
    y0, y1 = max(0.0, min(y0, y1)), min(float(height), max(y0, y1))
    if x1 <= x0 or y1 <= y0:
      continue
    # Cells [r0, r1) x [c0, c1) overlap the box with positive area.
    r0, r1 = int(np.floor(y0 / cell_h)), int(np.ceil(y1 / cell_h))
    c0, c1 = int(np.floor(x0 / cell_w)), int(np.ceil(x1 / cell_w))
    mask[r0:r1, c0:c1] = 1.0
  if dilation > 0:
    mask = _dilate(mask, dilation)
  return mask


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
  padded = np.pad(mask, radius)
  out = np.zeros_like(mask)
  h, w = mask.shape
  for dr in range(2 * radius + 1):
    for dc in range(2 * radius + 1):
      out = np.maximum(out, padded[dr : dr + h, dc : dc + w])
  return out


def propagate(final_mask: np.ndarray, schedule: ScaleSchedule, mode: str = 'max'):
  """Final-grid mask -> list of per-scale masks [h_s, w_s], coarse to fine."""
  if mode not in ('max', 'area'):
    raise ValueError(f"config.rl.mp.propagation must be 'max' or 'area', got {mode!r}")
  if final_mask.shape != schedule.grids[-1]:
    raise ValueError(f'final mask {final_mask.shape} != last grid {schedule.grids[-1]}')
  masks = [np.asarray(final_mask, np.float32)]
  for s in range(schedule.num_scales - 2, -1, -1):
    fine = masks[0]
    (h, w), (fh, fw) = schedule.grids[s], fine.shape
    a_h = resize.area_matrix(fh, h).astype(np.float64)
    a_w = resize.area_matrix(fw, w).astype(np.float64)
    if mode == 'max':
      coarse = (
        (a_h > 0).astype(np.float64) @ fine @ (a_w > 0).T.astype(np.float64)
      ) > 0
    else:
      coarse = a_h @ fine @ a_w.T
    masks.insert(0, np.asarray(coarse, np.float32))
  return masks


def token_mask(
  boxes: Sequence[Box],
  schedule: ScaleSchedule,
  dilation: int = 0,
  mode: str = 'max',
  floor: float = 0.0,
  empty: str = 'ones',
) -> np.ndarray:
  """One image's boxes -> float32 [L] propagated mask (floored)."""
  if empty not in ('ones', 'zeros'):
    raise ValueError(f"config.rl.mp.empty must be 'ones' or 'zeros', got {empty!r}")
  final = rasterize(boxes, schedule.image_size, schedule.grids[-1], dilation)
  if not final.any():
    flat = np.full(schedule.num_tokens, 1.0 if empty == 'ones' else 0.0, np.float32)
  else:
    flat = np.concatenate([m.reshape(-1) for m in propagate(final, schedule, mode)])
  return (floor + (1.0 - floor) * flat).astype(np.float32)


def batch_masks(
  boxes_per_image: Sequence[Sequence[Box]], schedule: ScaleSchedule, **kw
):
  """[B, L] masks for a batch of images."""
  return np.stack([token_mask(b, schedule, **kw) for b in boxes_per_image])


def union_over_branches(masks_bkl: np.ndarray) -> np.ndarray:
  """The prefix mask of K branches: element-wise max over axis 1, [B, K, L] -> [B, L]."""
  return np.max(np.asarray(masks_bkl), axis=1)
