"""The reward interface: config parsing, weighted sums, user rewards, JPEG size."""

import concurrent.futures
import time

import numpy as np
import pytest

from varrl_jax.config import base_config
from varrl_jax.rewards import api, image
from varrl_jax.rewards import text as reward_lib
from varrl_jax.rewards.pool import OcrPool
from varrl_jax.rewards.service import OcrReward
from varrl_jax.rewards.testing import MarkerEngine, marker_image

# -- user rewards, imported by path as tests.rewards.test_api:NAME ------------


def mean_pixel(images, prompts, targets):
  """A plain function reward: mean brightness in [0, 1]."""
  del prompts, targets
  return np.asarray(images, np.float32).mean(axis=(1, 2, 3)) / 255


class LeftHalf(api.Reward):
  """A Reward subclass with regions: the left half of every image."""

  name = 'left_half'

  def score(self, images, prompts, targets):
    n, _, w, _ = images.shape
    return api.RewardOutput(
      scores=np.arange(n, dtype=np.float32),
      regions=[[(0.0, 0.0, w / 2, 4.0)] for _ in range(n)],
      diagnostics={'left_n': np.full(n, 2.0)},
      counters={'left/images': n},
    )


class TopRow(LeftHalf):
  name = 'top_row'

  def score(self, images, prompts, targets):
    out = super().score(images, prompts, targets)
    out.regions = [[(0.0, 0.0, 1.0, 1.0), (2.0, 0.0, 3.0, 1.0)] for _ in out.regions]
    out.diagnostics = {'top_n': np.ones(len(images))}
    return out


class Delayed:
  """Duck-typed async reward (no base class): chunk i finishes after chunk
  i + 1, and scores count the prompt's length."""

  def __init__(self):
    self.executor = concurrent.futures.ThreadPoolExecutor(4)
    self.submitted = 0

  def submit(self, images, prompts, targets):
    delay = 0.2 if self.submitted == 0 else 0.0
    self.submitted += 1

    def work():
      time.sleep(delay)
      return np.asarray([len(p) for p in prompts], np.float32)

    return self.executor.submit(work)

  def collect(self, handles):
    return np.concatenate([h.result() for h in handles])

  def close(self):
    self.executor.shutdown()


def _config(rewards):
  c = base_config()
  c.rl.rewards = rewards
  return c


def _images(n=3, value=100):
  return np.full((n, 8, 16, 3), value, np.uint8)


# -- parsing ------------------------------------------------------------------


def test_parse_names_and_weights():
  specs = api.parse(' ocr:1.0 , jpeg_compressibility:0.2,jpeg_incompressibility')
  assert [(s.name, s.weight) for s in specs] == [
    ('ocr', 1.0),
    ('jpeg_compressibility', 0.2),
    ('jpeg_incompressibility', 1.0),
  ]
  assert api.parse('ocr:-0.5,jpeg_compressibility:0')[0].weight == -0.5


def test_parse_user_rewards():
  specs = api.parse(
    'tests.rewards.test_api:mean_pixel:2,tests.rewards.test_api:LeftHalf'
  )
  assert [(s.name, s.weight, s.obj) for s in specs] == [
    ('mean_pixel', 2.0, mean_pixel),
    ('left_half', 1.0, LeftHalf),  # its name attribute
  ]


@pytest.mark.parametrize(
  'spec, why',
  [
    ('ocrr', "'ocrr': unknown reward 'ocrr'"),
    ('ocr:abc', "'ocr:abc': weight 'abc' is not a number"),
    ('ocr:nan', 'weight nan is not finite'),
    ('ocr:inf', 'weight inf is not finite'),
    ('ocr,jpeg_compressibility,ocr:2', "'ocr': named twice"),
    ('ocr,', "'': empty item"),
    ('', 'no reward given'),
    ('ocr:0', 'every weight is 0'),
    ('no_such_module_xyz:Foo', 'cannot import no_such_module_xyz'),
    ('tests.rewards.test_api:Missing', "has no attribute 'Missing'"),
    ('a-b:c', 'is not MODULE:ATTR'),
    ('a:b:c:1', 'expected NAME[:WEIGHT] or MODULE:ATTR[:WEIGHT]'),
  ],
)
def test_bad_specs_name_the_key_the_item_and_the_known_rewards(spec, why):
  with pytest.raises(ValueError) as e:
    api.parse(spec)
  msg = str(e.value)
  assert msg.startswith(f'config.rl.rewards={spec!r}: '), msg
  assert why in msg, msg
  assert (
    'known rewards: clipscore, jpeg_compressibility, jpeg_incompressibility, ocr, '
    'preference' in msg
  )


# -- the weighted sum ---------------------------------------------------------


def test_weighted_sum_terms_regions_and_diagnostics():
  c = _config(
    'tests.rewards.test_api:mean_pixel:2,tests.rewards.test_api:LeftHalf:-0.5,'
    'tests.rewards.test_api:TopRow:0'
  )
  images = np.stack([marker_image(v, 8, 16) for v in (0, 51, 255)])
  with api.build(c) as reward:
    assert reward.weights == {'mean_pixel': 2.0, 'left_half': -0.5, 'top_row': 0.0}
    out = reward(images, ['a', 'b', 'c'], [(), (), ()])
  np.testing.assert_allclose(out.terms['mean_pixel'], [0, 0.2, 1], rtol=1e-6)
  np.testing.assert_array_equal(out.terms['left_half'], [0, 1, 2])
  np.testing.assert_allclose(
    out.scores, 2 * out.terms['mean_pixel'] - 0.5 * out.terms['left_half'], rtol=1e-6
  )
  assert out.scores.dtype == np.float32
  # Union in term order; the function reward gives none.
  assert out.regions[1] == [
    (0.0, 0.0, 8.0, 4.0),
    (0.0, 0.0, 1.0, 1.0),
    (2.0, 0.0, 3.0, 1.0),
  ]
  assert sorted(out.diagnostics) == ['left_n', 'top_n']
  assert out.counters == {'left/images': 6.0}  # both classes count


def test_no_term_with_regions_gives_none():
  with api.build(
    _config('jpeg_compressibility,tests.rewards.test_api:mean_pixel')
  ) as r:
    assert r(_images(), ['a'] * 3, [()] * 3).regions is None


def test_single_term_of_weight_one_is_its_scores_exactly():
  reward = api.build(_config('jpeg_incompressibility'))
  images = np.random.default_rng(0).integers(0, 256, (4, 8, 16, 3), np.uint8)
  out = reward(images, ['x'] * 4, [()] * 4)
  np.testing.assert_array_equal(out.scores, image.jpeg_kilobytes(images))


def test_same_diagnostic_from_two_terms_is_an_error():
  reward = api.WeightedReward(
    [api.Term('a', 1.0, LeftHalf()), api.Term('b', 1.0, LeftHalf())]
  )
  with pytest.raises(
    ValueError, match="rewards 'a' and 'b' both report diagnostic 'left_n'"
  ):
    reward(_images(), ['a'] * 3, [()] * 3)


def test_wrong_shape_names_the_reward():
  bad = api.FunctionReward(lambda i, p, t: np.zeros(2), 'short')
  with pytest.raises(
    ValueError, match=r'reward short: scores has shape \(2,\); expected \(3,\)'
  ):
    bad(_images(), ['a'] * 3, [()] * 3)


def test_async_submit_collect_keeps_submission_order():
  c = _config('tests.rewards.test_api:Delayed,jpeg_compressibility:0')
  prompts = [['a', 'bb'], ['ccc'], ['dddd', 'eeeee', 'ffffff']]
  with api.build(c) as reward:
    handles = [reward.submit(_images(len(p)), p, [()] * len(p)) for p in prompts]
    out = reward.collect(handles)
  np.testing.assert_array_equal(out.scores, [1, 2, 3, 4, 5, 6])
  assert len(out.terms['jpeg_compressibility']) == 6


def test_ocr_reward_matches_the_text_reward_of_its_readings():
  """The OCR term scores chunks like `rewards_for_batch` on the whole batch."""
  values = [40, 41, 42, 43]
  images = np.stack([marker_image(v) for v in values])
  targets = [('v40',), ('v4',), ('x',), ()]
  with OcrPool(MarkerEngine, num_workers=0) as pool:
    reward = OcrReward(pool, 'comp_sim_pen', fallback=-1.0, boxes='matched')
    handles = [
      reward.submit(images[:2], ['p'] * 2, targets[:2]),
      reward.submit(images[2:], ['p'] * 2, targets[2:]),
    ]
    out = reward.collect(handles)
    results = pool.read_batch(images)[0]
  want = reward_lib.rewards_for_batch(targets, results, 'comp_sim_pen', fallback=-1.0)
  np.testing.assert_array_equal(out.scores, want.rewards)
  np.testing.assert_array_equal(out.diagnostics['sim'], want.sim)
  assert out.regions == [list(b) for b in want.boxes]
  assert out.scores[3] == -1.0 and out.counters['ocr/images'] == 4
  with pytest.raises(ValueError, match="config.rl.mp.boxes must be 'matched' or 'all'"):
    OcrReward(None, boxes='some')


def test_ocr_term_uses_an_injected_pool_and_leaves_it_open():
  with OcrPool(MarkerEngine, num_workers=0) as pool:
    reward = api.as_weighted(pool, _config('ocr:2'))
    assert reward.get('ocr').pool is pool
    out = reward(np.stack([marker_image(5)]), ['p'], [('v5',)])
    assert out.scores[0] == pytest.approx(2 * out.terms['ocr'][0])
    reward.close()
    assert pool.read_batch([marker_image(1)])[0][0].texts == ['v1']  # still open


# -- JPEG size ----------------------------------------------------------------


def test_jpeg_rewards_order_flat_above_noisy():
  rng = np.random.default_rng(0)
  flat = np.full((16, 32, 3), 120, np.uint8)
  noisy = rng.integers(0, 256, (16, 32, 3), np.uint8)
  images = np.stack([flat, noisy])
  kb = image.jpeg_kilobytes(images)
  assert 0 < kb[0] < kb[1]
  compress = api.build(_config('jpeg_compressibility'))(images, ['a', 'b'], [(), ()])
  incompress = api.build(_config('jpeg_incompressibility'))(
    images, ['a', 'b'], [(), ()]
  )
  np.testing.assert_array_equal(compress.scores, -kb)
  np.testing.assert_array_equal(incompress.scores, kb)
  assert compress.scores[0] > compress.scores[1]
  assert incompress.scores[1] > incompress.scores[0]


def test_jpeg_size_is_deterministic():
  images = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), np.uint8)
  np.testing.assert_array_equal(
    image.jpeg_kilobytes(images), image.jpeg_kilobytes(images)
  )


# -- advantage shares ---------------------------------------------------------


def test_advantage_shares_decompose_the_advantage_variance():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
  weights = {'a': 1.0, 'b': 0.5}
  shares = api.advantage_shares({'a': a, 'b': b}, weights, 1e-4)
  assert shares['a'] + shares['b'] == pytest.approx(1.0)
  # By definition: <A_a, A> / <A, A> with the total's group std.
  total = a + 0.5 * b
  scale = total.std(-1, keepdims=True) + 1e-4
  adv = (total - total.mean(-1, keepdims=True)) / scale
  part = (a - a.mean(-1, keepdims=True)) / scale
  assert shares['a'] == pytest.approx((part * adv).sum() / (adv * adv).sum())
  assert api.advantage_shares({'a': a}, weights, 1e-4) == {'a': pytest.approx(1.0)}
  # A term that is constant within each group has no share; all-constant: 0.
  const = np.repeat(rng.normal(size=(3, 1)), 4, axis=1)
  assert api.advantage_shares({'a': a, 'b': const}, weights, 1e-4)[
    'b'
  ] == pytest.approx(0)
  assert api.advantage_shares({'b': const}, weights, 1e-4) == {'b': 0.0}
