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

Diagnostics (`branch_mask_stats`, logged per update as ``mp/scale{s}/*``):
how much of each scale the masks mark and how much the K branches of a
prefix agree on where the text is.
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
  """Square max filter over the last two axes ([..., h, w])."""
  pad = [(0, 0)] * (mask.ndim - 2) + [(radius, radius)] * 2
  padded = np.pad(mask, pad)
  out = np.zeros_like(mask)
  h, w = mask.shape[-2:]
  for dr in range(2 * radius + 1):
    for dc in range(2 * radius + 1):
      out = np.maximum(out, padded[..., dr : dr + h, dc : dc + w])
  return out


def propagate(final_mask: np.ndarray, schedule: ScaleSchedule, mode: str = 'max'):
  """Final-grid mask -> list of per-scale masks [h_s, w_s], coarse to fine."""
  if mode not in ('max', 'area'):
    raise ValueError(f"config.rl.mp.propagation must be 'max' or 'area', got {mode!r}")
  if final_mask.shape != schedule.grids[-1]:
    raise ValueError(f'final mask {final_mask.shape} != last grid {schedule.grids[-1]}')
  return [m[0] for m in _propagate_batch(np.asarray(final_mask)[None], schedule, mode)]


def _propagate_batch(finals_nhw: np.ndarray, schedule: ScaleSchedule, mode: str):
  """[N, h_S, w_S] final-grid masks -> list of [N, h_s, w_s] float32, coarse
  to fine (`propagate` of every mask at once)."""
  masks = [np.asarray(finals_nhw, np.float32)]
  for s in range(schedule.num_scales - 2, -1, -1):
    fine = masks[0].astype(np.float64)
    (h, w), (fh, fw) = schedule.grids[s], fine.shape[1:]
    a_h = resize.area_matrix(fh, h).astype(np.float64)
    a_w = resize.area_matrix(fw, w).astype(np.float64)
    if mode == 'max':
      a_h, a_w = (a_h > 0).astype(np.float64), (a_w > 0).astype(np.float64)
    coarse = a_h[None] @ fine @ a_w.T[None]
    if mode == 'max':
      coarse = coarse > 0
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


def branch_mask_stats(
  boxes_rk: Sequence[Sequence[Sequence[Box]]],
  schedule: ScaleSchedule,
  dilation: int = 0,
  mode: str = 'max',
  empty: str = 'ones',
  floor: float = 0.0,
) -> dict:
  r"""Per-scale coverage of the prefix masks and agreement of their K branches.

  ``boxes_rk``: R rows (prefixes), each with K box lists (its suffix
  branches); the settings are those of `token_mask`, but ``floor`` is
  ignored: the statistics are of the floor-0 masks. Notation, for row r,
  branch k and a token i of scale s (``n_s`` tokens):

  - b_{rk} = `token_mask` of branch k's boxes with ``empty='zeros'`` (a
    branch without boxes marks nothing; it is not a full mask);
  - u_r = the mask the prefix update uses: `token_mask` of the union of the
    K branches' boxes (``empty`` applies when no branch has any box); with
    'max' propagation and some box, u_r = max_k b_{rk};
  - I_{rs} = sum_{i in s} min_k b_{rki},  U_{rs} = sum_{i in s} max_k b_{rki}.

  Returns float64 arrays of shape [S] (S scales, coarse to fine):

  - ``coverage``[s] = mean_r (1/n_s) sum_{i in s} u_{ri}
  - ``branch_coverage``[s] = mean_{r,k} (1/n_s) sum_{i in s} b_{rki}
  - ``overlap``[s] = mean_{r: U_{rs} > 0} I_{rs} / U_{rs}: the Jaccard index of
    all K branches (the weighted one for 'area' masks); 1 for K = 1 by
    definition; 0 when one branch is empty and another is not; NaN when no
    row marks scale s. It falls with K even for identically distributed
    branches (an intersection of more sets), hence also
  - ``pair_overlap``[s]: the same Jaccard index of every pair of branches
    (a < b, rows and pairs with a non-empty pair union), mean over them; 1
    for K = 1.

  and the float ``branches_with_boxes`` = the share of the R K branches whose
  boxes mark at least one final-grid cell. Cost: one rasterization per
  branch and one batched propagation (`_propagate_batch`).
  """
  del floor  # the statistics are of the floor-0 masks
  if empty not in ('ones', 'zeros'):
    raise ValueError(f"config.rl.mp.empty must be 'ones' or 'zeros', got {empty!r}")
  if mode not in ('max', 'area'):
    raise ValueError(f"config.rl.mp.propagation must be 'max' or 'area', got {mode!r}")
  r = len(boxes_rk)
  k = len(boxes_rk[0]) if r else 0
  if r == 0 or k == 0 or any(len(row) != k for row in boxes_rk):
    raise ValueError(
      'branch_mask_stats: expected R >= 1 rows of the same K >= 1 branch box lists, '
      f'got branch counts {[len(row) for row in boxes_rk]}'
    )
  grid = schedule.grids[-1]
  finals = np.stack(
    [rasterize(b, schedule.image_size, grid) for row in boxes_rk for b in row]
  ).reshape(r, k, *grid)
  if dilation > 0:  # once for the whole stack: per mask it costs more
    finals = _dilate(finals, dilation)
  # Rasterizing and dilating commute with the union (both are maxima), so
  # the union's final grid is the max over branches.
  union = finals.max(axis=1)
  per_scale = _propagate_batch(
    np.concatenate([finals.reshape(r * k, *grid), union]), schedule, mode
  )
  flat = np.concatenate([m.reshape(len(m), -1) for m in per_scale], axis=1)
  b_rkl = flat[: r * k].reshape(r, k, -1).astype(np.float64)
  u_rl = flat[r * k :].astype(np.float64)
  u_rl[~union.reshape(r, -1).any(axis=1)] = 1.0 if empty == 'ones' else 0.0
  starts, n_s = schedule.offsets[:-1], schedule.counts

  def per_scale_sum(x):  # [..., L] -> [..., S]
    return np.add.reduceat(x, starts, axis=-1)

  def jaccard(inter, uni):  # [..., S] each -> mean over rows with uni > 0
    valid = uni > 0
    ratio = np.where(valid, inter / np.where(valid, uni, 1.0), 0.0)
    rows = valid.reshape(-1, valid.shape[-1]).sum(0)
    total = ratio.reshape(-1, ratio.shape[-1]).sum(0)
    return np.where(rows > 0, total / np.maximum(rows, 1), np.nan)

  stats = {
    'coverage': (per_scale_sum(u_rl) / n_s).mean(0),
    'branch_coverage': (per_scale_sum(b_rkl) / n_s).mean((0, 1)),
    'overlap': jaccard(per_scale_sum(b_rkl.min(1)), per_scale_sum(b_rkl.max(1))),
    'branches_with_boxes': float(finals.reshape(r * k, -1).any(1).mean()),
  }
  if k == 1:
    stats['pair_overlap'] = stats['overlap']
  else:
    a, b = np.triu_indices(k, 1)
    pa, pb = b_rkl[:, a], b_rkl[:, b]  # [R, pairs, L]
    stats['pair_overlap'] = jaccard(
      per_scale_sum(np.minimum(pa, pb)), per_scale_sum(np.maximum(pa, pb))
    )
  return stats


def stats_metrics(stats: dict, keys=None) -> dict[str, float]:
  """`branch_mask_stats` -> flat metrics ``mp/scale{s}/{key}`` (a NaN overlap,
  no row marking the scale, is left out) and ``mask/branches_with_boxes``.
  ``keys``: the per-scale statistics to keep (default all)."""
  keys = keys or ('coverage', 'branch_coverage', 'overlap', 'pair_overlap')
  out = {}
  for key in keys:
    for s, v in enumerate(stats[key]):
      if np.isfinite(v):
        out[f'mp/scale{s}/{key}'] = float(v)
  if 'branches_with_boxes' in stats:
    out['mask/branches_with_boxes'] = stats['branches_with_boxes']
  return out
