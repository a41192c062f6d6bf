import numpy as np
import pytest

from varrl_jax.models.schedule import ScaleSchedule
from varrl_jax.rl import masks

# 32x128 image, 8x32 final grid (4 px cells), uneven ratios in between.
SCHED = ScaleSchedule.create(((1, 4), (2, 8), (3, 12), (6, 24), (8, 32)), (32, 128), 4)


def _split(flat):
  return [
    flat[a:b].reshape(g)
    for (a, b), g in zip(zip(SCHED.offsets[:-1], SCHED.offsets[1:]), SCHED.grids)
  ]


def test_rasterize_marks_overlapping_cells_only():
  m = masks.rasterize([(4, 4, 12, 8)], (32, 128), (8, 32))
  assert m[1, 1:3].all() and m.sum() == 2
  # Touching a cell border with zero area marks nothing beyond it.
  assert m[2].sum() == 0 and m[:, 3].sum() == 0
  assert masks.rasterize([(5, 5, 5, 9)], (32, 128), (8, 32)).sum() == 0  # empty box
  d = masks.rasterize([(4, 4, 12, 8)], (32, 128), (8, 32), dilation=1)
  assert d.sum() == 3 * 4 and d[0:3, 0:4].all()


def test_all_ones_stays_all_ones():
  per_scale = masks.propagate(np.ones((8, 32), np.float32), SCHED)
  assert all(m.all() for m in per_scale)
  full = masks.token_mask([(0, 0, 128, 32)], SCHED)
  np.testing.assert_array_equal(full, 1.0)


@pytest.mark.parametrize('seed', range(5))
def test_coarse_covers_fine(seed):
  rng = np.random.default_rng(seed)
  x0, y0 = rng.uniform(0, 100), rng.uniform(0, 24)
  box = (x0, y0, x0 + rng.uniform(1, 28), y0 + rng.uniform(1, 8))
  per_scale = _split(masks.token_mask([box], SCHED))
  for s in range(SCHED.num_scales - 1):
    fine, coarse = per_scale[s + 1], per_scale[s]
    (fh, fw), (h, w) = fine.shape, coarse.shape
    for r, c in zip(*np.nonzero(fine)):
      # The coarse cells whose area overlaps fine cell (r, c) are all marked.
      rows = range(int(r * h // fh), int(np.ceil((r + 1) * h / fh)))
      cols = range(int(c * w // fw), int(np.ceil((c + 1) * w / fw)))
      assert all(coarse[i, j] for i in rows for j in cols)


def test_corner_box_never_marks_the_opposite_corner():
  per_scale = _split(masks.token_mask([(0, 0, 10, 6)], SCHED))
  for m in per_scale[1:]:  # the 1x4 scale has no opposite-corner cell separate from it
    assert m[0, 0] == 1 and m[-1, -1] == 0
  assert per_scale[0][0, -1] == 0


def test_area_mode_is_fractional_and_floor_applies():
  flat = masks.token_mask([(0, 0, 4, 4)], SCHED, mode='area', floor=0.1)
  per_scale = _split(flat)
  assert per_scale[-1][0, 0] == pytest.approx(1.0)
  assert 0.1 < per_scale[0][0, 0] < 1.0
  assert flat.min() == pytest.approx(0.1)


def test_empty_boxes_and_union():
  assert masks.token_mask([], SCHED).min() == 1.0
  assert masks.token_mask([], SCHED, empty='zeros').max() == 0.0
  a = masks.token_mask([(0, 0, 8, 8)], SCHED, empty='zeros')
  b = masks.token_mask([(120, 24, 128, 32)], SCHED, empty='zeros')
  u = masks.union_over_branches(np.stack([a, b])[None])
  np.testing.assert_array_equal(u[0], np.maximum(a, b))
  with pytest.raises(ValueError, match='propagation'):
    masks.token_mask([(0, 0, 8, 8)], SCHED, mode='mean')
