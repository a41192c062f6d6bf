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


# branch_mask_stats: 16x16 image, 4 px cells on the 4x4 final grid.
SQ = ScaleSchedule.create((1, 2, 4), (16, 16), 4)
TOP_LEFT, BOTTOM_RIGHT = (0, 0, 4, 4), (12, 12, 16, 16)  # one final cell each


def test_branch_stats_disjoint_branches_meet_at_the_coarse_scales():
  st = masks.branch_mask_stats([[[TOP_LEFT], [BOTTOM_RIGHT]]], SQ)
  # Final 4x4: two cells each, no common one. 2x2: opposite corners. 1x1: both.
  np.testing.assert_allclose(st['overlap'], [1.0, 0.0, 0.0])
  np.testing.assert_allclose(st['pair_overlap'], [1.0, 0.0, 0.0])
  np.testing.assert_allclose(st['coverage'], [1.0, 2 / 4, 2 / 16])
  np.testing.assert_allclose(st['branch_coverage'], [1.0, 1 / 4, 1 / 16])
  assert st['branches_with_boxes'] == 1.0


def test_branch_stats_identical_and_empty_branches():
  same = masks.branch_mask_stats([[[TOP_LEFT], [TOP_LEFT]]], SQ)
  np.testing.assert_allclose(same['overlap'], 1.0)
  np.testing.assert_allclose(same['coverage'], same['branch_coverage'])
  # One branch without boxes: it marks nothing (not everything), so the
  # union is the other branch and the intersection, hence the overlap, is 0.
  half = masks.branch_mask_stats([[[TOP_LEFT], []]], SQ)
  np.testing.assert_allclose(half['coverage'], [1.0, 1 / 4, 1 / 16])
  np.testing.assert_allclose(half['branch_coverage'], [0.5, 1 / 8, 1 / 32])
  np.testing.assert_allclose(half['overlap'], 0.0)
  assert half['branches_with_boxes'] == 0.5
  # No branch has boxes: the used mask follows `empty`; overlap is undefined.
  none = masks.branch_mask_stats([[[], []], [[TOP_LEFT], [TOP_LEFT]]], SQ)
  np.testing.assert_allclose(none['coverage'], [1.0, (1 + 1 / 4) / 2, (1 + 1 / 16) / 2])
  np.testing.assert_allclose(none['overlap'], 1.0)  # the row without boxes is left out
  zeros = masks.branch_mask_stats([[[], []]], SQ, empty='zeros')
  np.testing.assert_allclose(zeros['coverage'], 0.0)
  assert np.isnan(zeros['overlap']).all()
  assert masks.stats_metrics(zeros, ('overlap',)) == {'mask/branches_with_boxes': 0.0}


def test_branch_stats_k4_all_k_versus_pairs():
  # Three branches share the top-left cell, the fourth is elsewhere: the
  # all-K Jaccard is 0 at the final grid, the pairs' mean 3 / 6.
  row = [[TOP_LEFT], [TOP_LEFT], [TOP_LEFT], [BOTTOM_RIGHT]]
  st = masks.branch_mask_stats([row], SQ)
  np.testing.assert_allclose(st['overlap'], [1.0, 0.0, 0.0])
  np.testing.assert_allclose(st['pair_overlap'], [1.0, 0.5, 0.5])
  one = masks.branch_mask_stats([[[TOP_LEFT]], [[BOTTOM_RIGHT]]], SQ)  # K = 1
  np.testing.assert_allclose(one['overlap'], 1.0)
  np.testing.assert_allclose(one['pair_overlap'], 1.0)
  with pytest.raises(ValueError, match='same K'):
    masks.branch_mask_stats([[[TOP_LEFT]], [[], []]], SQ)


@pytest.mark.parametrize('mode', ['max', 'area'])
def test_branch_stats_match_token_mask_on_random_boxes(mode):
  rng = np.random.default_rng(3)

  def boxes():
    out = []
    for _ in range(rng.integers(0, 3)):
      x0, y0 = rng.uniform(0, 110), rng.uniform(0, 28)
      out.append((x0, y0, x0 + rng.uniform(1, 30), y0 + rng.uniform(1, 10)))
    return out

  rows = [[boxes() for _ in range(3)] for _ in range(6)]
  kw = dict(dilation=1, mode=mode)
  st = masks.branch_mask_stats(rows, SCHED, floor=0.3, **kw)  # floor is ignored
  b = np.array(
    [[masks.token_mask(x, SCHED, empty='zeros', **kw) for x in r] for r in rows]
  )
  u = np.array([masks.token_mask(sum(r, []), SCHED, **kw) for r in rows])
  for s, (lo, hi) in enumerate(zip(SCHED.offsets[:-1], SCHED.offsets[1:])):
    assert st['coverage'][s] == pytest.approx(u[:, lo:hi].mean())
    assert st['branch_coverage'][s] == pytest.approx(b[..., lo:hi].mean())
    inter, union = b[..., lo:hi].min(1).sum(-1), b[..., lo:hi].max(1).sum(-1)
    keep = union > 0
    assert st['overlap'][s] == pytest.approx((inter[keep] / union[keep]).mean())
  # A batch propagates each of its masks on its own.
  grid = SCHED.grids[-1]
  one, two = (
    masks.rasterize(x, SCHED.image_size, grid) for x in (rows[0][0], rows[1][1])
  )
  batched = masks._propagate_batch(np.stack([one, two]), SCHED, mode)
  for i, final in enumerate((one, two)):
    for a, m in zip(masks.propagate(final, SCHED, mode), batched):
      np.testing.assert_array_equal(a, m[i])


def test_prefix_update_logs_the_branch_stats_of_its_boxes(toy):
  """The loop's ``mp/scale{s}/*`` are `branch_mask_stats` of each prefix's K
  branches (rows branch-major within a prefix); suffix updates log coverage."""
  import dataclasses

  import jax

  from tests.rl.test_loop import PROMPTS, ReadsWhenBright, rl_config
  from varrl_jax.rewards.pool import OcrPool
  from varrl_jax.rl import loop
  from varrl_jax.rl import rollout as rollout_lib

  _, model, params = toy
  config = rl_config('full')  # P = G = K = 2: 4 prefixes, 8 rows
  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    trainer = loop.Trainer(config, model, params, pool)
    ro = trainer.rollout(PROMPTS, jax.random.key(0))
    scored = rollout_lib.score(ro, trainer.reward)
  tl, br = (
    [(0.0, 0.0, 4.0, 4.0)],
    [(28.0, 12.0, 32.0, 16.0)],
  )  # final cells (0,0), (3,7)
  per_prefix = [[tl, tl], [tl, br], [tl, []], [[], []]]
  scored = dataclasses.replace(scored, boxes=[b for pair in per_prefix for b in pair])
  _, stats = trainer.build_batch(ro, scored, 'prefix')
  want = masks.stats_metrics(masks.branch_mask_stats(per_prefix, model.schedule))
  assert {k: v for k, v in stats.items() if k.startswith(('mp/', 'mask/b'))} == want
  # Prefixes 0, 1, 2 mark the final grid; their Jaccard indices are 1, 0, 0.
  assert stats['mp/scale2/overlap'] == pytest.approx(1 / 3)
  # The last prefix has no box: its mask is all ones (config.rl.mp.empty).
  assert stats['mp/scale2/coverage'] == pytest.approx((1 + 2 + 1) / 32 / 4 + 1 / 4)
  assert stats['mask/branches_with_boxes'] == pytest.approx(5 / 8)
  _, suffix = trainer.build_batch(ro, scored, 'suffix')
  assert not any(k.endswith('overlap') for k in suffix)
  assert suffix['mp/scale2/coverage'] == pytest.approx((5 / 32 + 3) / 8)  # 3 rows: ones
  trainer.method = dataclasses.replace(trainer.method, use_mp=False)
  _, off = trainer.build_batch(ro, scored, 'prefix')
  assert not any(k.startswith('mp/') for k in off)
