"""`config.rl.vmr.m='adaptive'`: the prefix-share estimator, the controller,
its config checks, the loop training each update at its rollout's split, and
exact resume of the controller's state."""

import json
import math
import os
import signal

import jax
import numpy as np
import pytest

from tests.rl.test_loop import (
  PROMPTS,
  ReadsWhenBright,
  _assert_bitwise_equal,
  _final_params,
  _train_config,
  rl_config,
)
from tests.rl.test_vmr import NEXTFLOW
from varrl_jax import checkpoint
from varrl_jax.rewards.pool import OcrPool
from varrl_jax.rl import adaptive_m, loop, pipeline


def _settings(**kw):
  base = dict(start=2, target=0.5, band=0.1, decay=0.5, every=1, lo=1, hi=3)
  return adaptive_m.Settings(**{**base, **kw})


# The estimator.


def test_share_matches_a_hand_computation():
  r = np.array(
    [
      [[1.0, 3.0], [5.0, 7.0]],  # W = 2, B = var(2, 6) - W / 2 = 8 - 1 = 7
      [[0.0, 2.0], [0.0, 2.0]],  # W = 2, B = 0 - 1 = -1
      [[4.0, 4.0], [4.0, 4.0]],  # no variance: left out
    ]
  )
  assert adaptive_m.prefix_share(r) == pytest.approx(6.0 / (6.0 + 4.0), abs=1e-12)
  assert adaptive_m.prefix_share(r[:1]) == pytest.approx(7.0 / 9.0, abs=1e-12)
  # B < 0 in total (identical prefix means): clipped to 0.
  assert adaptive_m.prefix_share(r[1:]) == 0.0


def test_share_known_cases():
  rng = np.random.default_rng(0)
  means = rng.normal(size=(3, 4, 1))
  # Every branch of a prefix equal: the prefix decides everything.
  assert adaptive_m.prefix_share(np.repeat(means, 3, axis=2)) == 1.0
  # Identical prefix means, branches differ: the prefix explains nothing.
  branches = np.array([-1.0, 0.0, 1.0])
  r = np.broadcast_to(branches, (3, 4, 3)) + rng.normal(size=(3, 1, 1))
  assert adaptive_m.prefix_share(r) == 0.0
  # Undefined: no variance anywhere, one prefix or one branch.
  assert math.isnan(adaptive_m.prefix_share(np.ones((2, 4, 2))))
  assert math.isnan(adaptive_m.prefix_share(rng.normal(size=(2, 1, 4))))
  assert math.isnan(adaptive_m.prefix_share(rng.normal(size=(2, 4, 1))))
  with pytest.raises(ValueError, match=r'must be \[P, G, K\]'):
    adaptive_m.prefix_share(np.ones((4, 2)))


@pytest.mark.parametrize('icc', [0.2, 0.5, 0.8])
def test_share_recovers_the_true_icc(icc):
  """R = mu_p + a_pg + e_pgk with Var a = icc, Var e = 1 - icc: the share
  estimates icc. At P G K = 4000 x 4 x 4 its bias is < 2e-4 and its standard
  deviation <= 0.005 (200 seeds), so 0.02 is 4 sigma."""
  rng = np.random.default_rng(int(icc * 10))
  p, g, k = 4000, 4, 4
  r = (
    rng.normal(size=(p, 1, 1)) * 5
    + rng.normal(size=(p, g, 1)) * math.sqrt(icc)
    + rng.normal(size=(p, g, k)) * math.sqrt(1 - icc)
  )
  assert adaptive_m.prefix_share(r) == pytest.approx(icc, abs=0.02)


# The controller.


def _feed(ctrl, shares, start=0):
  """Observes ``shares`` at the controller's current m; returns m after each."""
  out = []
  for u, share in enumerate(shares, start):
    ctrl.observe(u, share, ctrl.m)
    out.append(ctrl.m)
  return out


def test_controller_moves_down_up_clamps_and_holds():
  assert _feed(adaptive_m.Controller(_settings()), [0.9, 0.9, 0.9]) == [1, 1, 1]
  assert _feed(adaptive_m.Controller(_settings()), [0.1, 0.1, 0.1]) == [3, 3, 3]
  # Inside [target - band, target + band]: no move.
  assert _feed(adaptive_m.Controller(_settings()), [0.41, 0.59, 0.6, 0.4]) == [2] * 4


def test_controller_ema_nan_and_every():
  ctrl = adaptive_m.Controller(_settings(every=3, decay=0.5))
  ctrl.observe(0, 0.9, 2)
  assert ctrl.ema == 0.9  # the first estimate sets it
  ctrl.observe(1, math.nan, 2)  # skipped
  assert ctrl.ema == 0.9 and ctrl.m == 2
  assert ctrl.observe(2, 0.5, 2) == pytest.approx(0.7)  # 0.5 * 0.9 + 0.5 * 0.5
  # Decision at (u + 1) % 3 == 0: 0.7 > 0.6, one scale down; the EMA restarts.
  assert ctrl.m == 1 and math.isnan(ctrl.ema)
  # A share measured at another m (an overlapped rollout of before the move)
  # is skipped; a window without any estimate holds m.
  assert _feed_at(ctrl, [(3, 0.0, 2), (4, math.nan, 1), (5, math.nan, 1)]) == [1] * 3
  assert math.isnan(ctrl.ema)
  # Not before the end of the window.
  ctrl = adaptive_m.Controller(_settings(every=3))
  assert _feed(ctrl, [0.1, 0.1, 0.1, 0.1]) == [2, 2, 3, 3]


def _feed_at(ctrl, rows):
  out = []
  for u, share, m in rows:
    ctrl.observe(u, share, m)
    out.append(ctrl.m)
  return out


def test_controller_split_of_a_rollout_is_fixed_at_dispatch():
  ctrl = adaptive_m.Controller(_settings())
  assert ctrl.split_for(1) == 2
  ctrl.observe(0, 0.9, 2)  # moves m to 1 after rollout 1 was dispatched
  assert (ctrl.m, ctrl.split_for(1), ctrl.take(1), ctrl.take(2)) == (1, 2, 2, 1)
  assert ctrl.in_flight == {}


def test_controller_resume_equals_uninterrupted():
  shares = np.random.default_rng(3).uniform(size=24)
  shares[[4, 9]] = math.nan

  def run(ctrl, updates):
    trace = []
    for u in updates:
      ctrl.split_for(u + 1)  # overlap: the next rollout is dispatched first
      m = ctrl.take(u)
      ema = ctrl.observe(u, shares[u], m)
      trace.append((m, ema, ctrl.m))
    return trace

  straight = adaptive_m.Controller(_settings(every=4))
  straight.split_for(0)
  expected = run(straight, range(24))
  # Save right after a move: rollout `cut` is in flight at the old m.
  cut = 1 + next(u for u, (m, _, after) in enumerate(expected) if after != m)
  first = adaptive_m.Controller(_settings(every=4))
  first.split_for(0)
  head = run(first, range(cut))
  assert first.in_flight[cut] != first.m
  saved = json.loads(json.dumps(first.record()))  # as the run record stores it
  assert saved['in_flight'] == [[cut, first.in_flight[cut]]]
  second = adaptive_m.Controller(_settings(every=4))
  second.restore(saved)
  np.testing.assert_equal(head + run(second, range(cut, 24)), expected)
  with pytest.raises(ValueError, match=r'saved adaptive split m=7 is outside'):
    second.restore(dict(saved, m=7))
  with pytest.raises(ValueError, match=r'saved adaptive split m=9 is outside'):
    second.restore(dict(saved, in_flight=[[cut, 9]]))
  # Other settings: the saved EMA and m belong to those.
  other = adaptive_m.Controller(_settings(every=8))
  with pytest.raises(
    ValueError, match=r'other config.rl.vmr.adaptive settings \(every'
  ):
    other.restore(saved)


# Config.


def test_settings_defaults_on_nextflow_scales():
  c = rl_config('full')
  c.rl.vmr.m = 'adaptive'
  s = adaptive_m.Settings.from_config(c, NEXTFLOW)
  # min 1, max S - 2 = 16, start in the middle (m160); one 3:1 cycle.
  assert (s.lo, s.hi, s.start, s.every) == (1, 16, 8, 4)
  assert (s.target, s.band, s.decay) == (0.5, 0.1, 0.5)
  c.rl.vmr.adaptive.start, c.rl.vmr.adaptive.max = 'm128', 'm256'
  c.rl.vmr.adaptive.min, c.rl.vmr.adaptive.every = '-17', 2
  s = adaptive_m.Settings.from_config(c, NEXTFLOW)
  assert (s.lo, s.hi, s.start, s.every) == (1, 11, 7, 2)


@pytest.mark.parametrize(
  'key, value, message',
  [
    ('target', 1.0, r'config\.rl\.vmr\.adaptive\.target must be in \(0, 1\)'),
    (
      'band',
      0.5,
      r'config\.rl\.vmr\.adaptive\.band must be in .* = \[0, 0\.5\), got 0\.5',
    ),
    ('decay', 1.0, r'config\.rl\.vmr\.adaptive\.decay must be in \[0, 1\)'),
    ('every', -1, r'config\.rl\.vmr\.adaptive\.every must be >= 0'),
    ('max', '-1', r"config\.rl\.vmr\.adaptive\.max='-1' is scale 17, the last"),
    ('min', 'm999', r"config\.rl\.vmr\.adaptive\.min='m999': no scale reaches"),
    ('min', '12', r"config\.rl\.vmr\.adaptive\.min='12' \(scale 12\) is above max"),
    ('start', '0', r"config\.rl\.vmr\.adaptive\.start='0' \(scale 0\) is outside"),
    ('start', 'early', r"config\.rl\.vmr\.adaptive\.start='early': expected"),
  ],
)
def test_bad_settings_name_the_key(key, value, message):
  c = rl_config('full')
  c.rl.vmr.m = 'adaptive'
  c.rl.vmr.adaptive.max = '11'
  c.rl.vmr.adaptive[key] = value
  with pytest.raises(ValueError, match=message):
    adaptive_m.Settings.from_config(c, NEXTFLOW)


def test_method_resolves_adaptive(toy):
  _, model, _ = toy
  c = rl_config('full')
  c.rl.vmr.m = 'adaptive'
  c.rl.vmr.adaptive.min = '0'
  method = loop.Method.from_config(c, model)
  assert (method.use_vmr, method.adaptive, method.m) == (True, True, 0)
  c.rl.vmr.num_branches = 1
  with pytest.raises(ValueError, match=r'config\.rl\.vmr\.num_branches must be >= 2'):
    loop.Method.from_config(c, model)
  c.rl.mode = 'vanilla'  # no split at all: the setting is unused
  assert not loop.Method.from_config(c, model).adaptive


# The loop.


def _adaptive_config(pipe='sync'):
  """Toy model (3 scales): m in {0, 1}, starting at 1, a decision per update."""
  c = rl_config('full')
  c.rl.vmr.m = 'adaptive'
  c.rl.vmr.adaptive.update(start='1', min='0', max='1', every=1)
  c.rl.pipeline = pipe
  return c


@pytest.mark.parametrize('pipe, used', [('sync', [1, 0]), ('overlap', [1, 1, 0])])
def test_each_update_trains_at_its_rollouts_split(toy, monkeypatch, pipe, used):
  """A share of 0.9 (above target + band) after update 0 moves m from 1 to 0.
  Sync: update 1 samples and trains at m = 0. Overlap: rollout 1 was
  dispatched before update 0's rewards, so update 1 trains at m = 1 and
  update 2 at m = 0."""
  from varrl_jax.rl import rollout

  _, model, params = toy
  c = _adaptive_config(pipe)
  c.rl.num_updates = len(used)
  monkeypatch.setattr(adaptive_m, 'prefix_share', lambda r: 0.9)
  sampled, lengths = [], []
  sample, dispatch = rollout.sample, rollout.dispatch
  build_batch = loop.Trainer.build_batch

  def spy_sample(sampler, params, prompts, g, k, m, *a):
    sampled.append(m)
    return sample(sampler, params, prompts, g, k, m, *a)

  def spy_dispatch(sampler, params, prompts, g, k, m, *a):
    sampled.append(m)
    return dispatch(sampler, params, prompts, g, k, m, *a)

  def spy_build_batch(self, *a, **kw):
    batch, stats = build_batch(self, *a, **kw)
    lengths.append(batch['tokens'].shape[1])
    return batch, stats

  monkeypatch.setattr(rollout, 'sample', spy_sample)
  monkeypatch.setattr(rollout, 'dispatch', spy_dispatch)
  monkeypatch.setattr(loop.Trainer, 'build_batch', spy_build_batch)
  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    trainer = loop.Trainer(c, model, params, pool)
    pipe_ = pipeline.build(c, trainer, lambda u: PROMPTS, jax.random.key(7))
    metrics = [pipe_.run(u)[0] for u in range(len(used))]
  assert sampled == used
  assert [r['vmr/m'] for r in metrics] == used
  offsets = model.schedule.offsets
  assert lengths == [int(offsets[m + 1]) for m in used]  # prefix batches
  for r, m in zip(metrics, used):
    # The prefix update of split m steps scales <= m only.
    assert r[f'scale{m}/grad_share'] > 0
    assert all(r[f'scale{s}/grad_share'] == 0 for s in range(m + 1, 3))
    assert r['vmr/prefix_share'] == 0.9
  # The EMA of the current m: it restarts after the move; overlap's update 1
  # measured m = 1 while m = 0 was in force, so it is not logged.
  assert metrics[0]['vmr/prefix_share_ema'] == 0.9
  assert ('vmr/prefix_share_ema' in metrics[1]) == (pipe == 'sync')
  assert trainer.split.m == 0


def test_fixed_split_logs_the_prefix_share(toy):
  _, model, params = toy
  c = rl_config('full')
  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    trainer = loop.Trainer(c, model, params, pool)
    metrics, _, scored, _ = trainer.run_update(0, PROMPTS, jax.random.key(1))
  assert trainer.split is None and metrics['vmr/m'] == 1.0
  assert 'vmr/prefix_share_ema' not in metrics
  share = adaptive_m.prefix_share(scored.rewards)
  assert math.isfinite(share), scored.rewards  # this draw has variance
  assert metrics['vmr/prefix_share'] == share


# Exact resume through train.py.


def _train_adaptive():
  c = _train_config()
  c.rl.vmr.m = 'adaptive'
  c.rl.vmr.adaptive.update(start='0', min='0', max='1', every=1)
  c.rl.pipeline = 'overlap'
  c.rl.num_updates = 3
  return c


@pytest.mark.slow  # 30-70 s on 2 busy cores: four train.py runs
def test_sigterm_resume_of_the_adaptive_split_is_bit_identical(tmp_path, monkeypatch):
  """Overlap, a share of 0.1 (below target - band): m moves 0 -> 1 after
  update 0, while rollout 1 is already in flight at m = 0. A SIGTERM during
  update 0 saves that state; the resumed run samples rollout 1 at m = 0
  again and ends with the same parameters, splits and rewards."""
  from varrl_jax import train
  from varrl_jax.writers import read_jsonl

  monkeypatch.setattr(adaptive_m, 'prefix_share', lambda r: 0.1)
  straight, split = tmp_path / 'straight', tmp_path / 'split'
  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    train.train(_train_adaptive(), str(straight), pool=pool)
  run = pipeline.Overlap.run

  def preempted_during_update_0(self, update):
    if update == 0:
      os.kill(os.getpid(), signal.SIGTERM)
    return run(self, update)

  monkeypatch.setattr(pipeline.Overlap, 'run', preempted_during_update_0)
  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    with pytest.raises(train.Preempted):
      train.train(_train_adaptive(), str(split), pool=pool)
  monkeypatch.setattr(pipeline.Overlap, 'run', run)
  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    train.train(_train_adaptive(), str(split), pool=pool)
  _assert_bitwise_equal(_final_params(split), _final_params(straight))
  a, b = (read_jsonl(str(p / 'metrics.jsonl')) for p in (straight, split))
  assert [r['vmr/m'] for r in a] == [r['vmr/m'] for r in b] == [0, 0, 1]
  assert [r['reward/mean'] for r in a] == [r['reward/mean'] for r in b]

  # A fixed split does not resume an adaptive run's state.
  c = _train_config()
  c.rl.pipeline, c.rl.num_updates = 'overlap', 4
  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    with pytest.raises(
      checkpoint.CheckpointError,
      match=r"saved with config\.rl\.vmr\.m='adaptive', but this run has a fixed",
    ):
      train.train(c, str(split), pool=pool)


def test_resume_refuses_a_fixed_split_state_into_adaptive():
  from varrl_jax import train

  class States:
    directory = '/w/checkpoints/state'

    def latest_record(self):  # an older record has no vmr_split: fixed
      return {'pipeline': 'sync', 'lora': {'rank': 0}, 'update': 3}

  class Trainer:
    split = adaptive_m.Controller(_settings())

  with pytest.raises(
    checkpoint.CheckpointError,
    match=r'state: saved with a fixed config\.rl\.vmr\.m, but this run has '
    r"config\.rl\.vmr\.m='adaptive'",
  ):
    train._resume(rl_config('full'), Trainer(), States())
