"""The scale schedule: which token grids the model predicts, coarse to fine.

Everything that depends on the schedule is a numpy constant built once on the
host (token counts, offsets, the token -> scale index, PANW weights, stage
selectors), so every jitted program has static shapes.

A schedule is a tuple of ``(h_s, w_s)`` grids, s = 0..S-1, strictly growing in
area and non-decreasing in each side, whose last grid is the tokenizer's latent
grid ``(H / downsample, W / downsample)``. Token ``i`` of the flattened image
sequence belongs to scale ``scale_index[i]``; scale s occupies
``[offsets[s], offsets[s] + n_s)`` with ``n_s = h_s * w_s``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


class ScheduleError(ValueError):
  """An invalid scale schedule or image size (message names the field)."""


def _as_grid(item, index: int) -> tuple[int, int]:
  if isinstance(item, (int, np.integer)):
    grid = (int(item), int(item))
  elif isinstance(item, (tuple, list)) and len(item) == 2:
    grid = (int(item[0]), int(item[1]))
  else:
    raise ScheduleError(
      f'config.scales[{index}]: expected an int side or an (h, w) pair, got {item!r}'
    )
  if grid[0] < 1 or grid[1] < 1:
    raise ScheduleError(f'config.scales[{index}]: sides must be >= 1, got {grid}')
  return grid


@dataclasses.dataclass(frozen=True)
class ScaleSchedule:
  """A validated scale schedule; hashable, so it can be a static jit argument."""

  grids: tuple[tuple[int, int], ...]
  image_size: tuple[int, int]
  downsample: int

  @classmethod
  def create(
    cls,
    scales: Sequence,
    image_size: Sequence[int],
    downsample: int,
  ) -> ScaleSchedule:
    """Validates and builds a schedule; errors name the offending config field."""
    if len(scales) == 0:
      raise ScheduleError('config.scales: the schedule is empty')
    if len(image_size) != 2:
      raise ScheduleError(
        f'config.image_size: expected (height, width), got {tuple(image_size)}'
      )
    height, width = int(image_size[0]), int(image_size[1])
    if downsample < 1:
      raise ScheduleError(f'config.tokenizer.downsample must be >= 1, got {downsample}')
    if height % downsample or width % downsample:
      raise ScheduleError(
        f'config.image_size {(height, width)} is not divisible by '
        f'config.tokenizer.downsample={downsample}'
      )
    grids = tuple(_as_grid(item, i) for i, item in enumerate(scales))
    for i in range(1, len(grids)):
      (h0, w0), (h1, w1) = grids[i - 1], grids[i]
      if h1 < h0 or w1 < w0 or h1 * w1 <= h0 * w0:
        raise ScheduleError(
          f'config.scales[{i}]={grids[i]} must grow from config.scales[{i - 1}]='
          f'{grids[i - 1]} (each side non-decreasing, area strictly increasing)'
        )
    latent = (height // downsample, width // downsample)
    if grids[-1] != latent:
      raise ScheduleError(
        f'config.scales[-1]={grids[-1]} must equal the latent grid {latent} '
        f'(config.image_size {(height, width)} / downsample {downsample})'
      )
    return cls(grids=grids, image_size=(height, width), downsample=downsample)

  @property
  def num_scales(self) -> int:
    return len(self.grids)

  @property
  def latent_size(self) -> tuple[int, int]:
    return self.grids[-1]

  @property
  def counts(self) -> np.ndarray:
    """n_s = h_s * w_s, int64 [S]."""
    return np.array([h * w for h, w in self.grids], dtype=np.int64)

  @property
  def offsets(self) -> np.ndarray:
    """Start of each scale in the flattened image sequence, int64 [S + 1]."""
    return np.concatenate([[0], np.cumsum(self.counts)])

  @property
  def num_tokens(self) -> int:
    """L = sum_s h_s * w_s."""
    return int(self.counts.sum())

  @property
  def scale_index(self) -> np.ndarray:
    """The scale of every image token, int32 [L]."""
    return np.repeat(np.arange(self.num_scales, dtype=np.int32), self.counts)

  def span(self, s: int) -> tuple[int, int]:
    """Half-open token range [start, end) of scale s."""
    return int(self.offsets[s]), int(self.offsets[s + 1])

  def resolution(self, s: int) -> int:
    """Pixel resolution reached after scale s: longer grid side x downsampling."""
    h, w = self.grids[s]
    return max(h, w) * self.downsample

  def scale_for_resolution(self, pixels: int) -> int:
    """The scale index whose grid reaches `pixels` (the paper's m256 naming).

    With NextFlow's 18 scales at 1024^2 and downsampling 16, m256 is the scale
    with a 16x16 grid, i.e. index 11, a prefix of 12 scales.
    """
    for s in range(self.num_scales):
      if self.resolution(s) == pixels:
        return s
    known = sorted({self.resolution(s) for s in range(self.num_scales)})
    raise ScheduleError(
      f'no scale reaches {pixels} px; resolutions of this schedule: {known}'
    )
