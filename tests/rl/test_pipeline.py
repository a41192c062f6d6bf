"""`config.rl.pipeline`: the overlapped pipeline samples update u+1 with the
params before update u's step, learns off-policy from the recorded log-probs,
and resumes exactly."""

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
from varrl_jax import checkpoint
from varrl_jax.rewards.pool import OcrPool
from varrl_jax.rl import loop, pipeline, rollout


def _leaves(tree):
  return [np.asarray(x).copy() for x in jax.tree.leaves(tree)]


def _pipe(config, trainer):
  return pipeline.build(config, trainer, lambda u: PROMPTS, jax.random.key(7))


def test_overlap_samples_one_update_behind_and_learns_off_policy(toy, monkeypatch):
  _, model, params = toy
  c = rl_config('full')
  c.rl.pipeline = 'overlap'
  c.rl.num_updates = 3
  dispatched, batches = {}, []
  dispatch, build_batch = rollout.dispatch, loop.Trainer.build_batch

  def recording_dispatch(sampler, policy, prompts, g, k, m, key, chunks):
    n = len(dispatched)
    dispatched[n] = _leaves(policy['transformer'])
    return dispatch(sampler, policy, prompts, g, k, m, key, chunks)

  def recording_build_batch(self, ro, scored, phase, on_policy=True, **kw):
    batch, stats = build_batch(self, ro, scored, phase, on_policy, **kw)
    batches.append((ro, batch))
    return batch, stats

  monkeypatch.setattr(rollout, 'dispatch', recording_dispatch)
  monkeypatch.setattr(loop.Trainer, 'build_batch', recording_build_batch)
  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    trainer = loop.Trainer(c, model, params, pool)
    pipe = _pipe(c, trainer)
    thetas = [_leaves(trainer.state.params)]
    for u in range(3):
      pipe.run(u)
      thetas.append(_leaves(trainer.state.params))
    # Rollout 0 and 1 from theta_0 (nothing to overlap before the first
    # step), rollout 2 from theta_1; none after the last update.
    assert sorted(dispatched) == [0, 1, 2]
    for n, theta in zip(range(3), (0, 0, 1)):
      for a, b in zip(dispatched[n], thetas[theta]):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(thetas[0], thetas[1]))
    # Off policy, decoupled (the default): the batch holds the sampler's
    # record of the behaviour policy, and the first step takes its own
    # log-probs as log pi_old (on_policy 1).
    for ro, batch in batches:
      assert float(batch['on_policy']) == 1.0
      rows = np.arange(0, ro.logprobs.shape[0], ro.shape[2])
      if batch['behaviour_logp'].shape[0] == ro.logprobs.shape[0]:
        rows = np.arange(ro.logprobs.shape[0])
      n = batch['behaviour_logp'].shape[1]  # a prefix batch: the prefix positions
      np.testing.assert_array_equal(
        np.asarray(batch['behaviour_logp']), ro.logprobs[rows, :n]
      )
    # The pending rollout 2 is exactly the synchronous sampler's draw with
    # theta_1 and update 2's key.
    theta1 = jax.tree.unflatten(jax.tree.structure(trainer.state.params), thetas[1])
    ref = rollout.sample(
      trainer.sampler,
      trainer.policy_params(theta1),
      PROMPTS,
      c.rl.group_size,
      c.rl.vmr.num_branches,
      trainer.method.m,
      jax.random.fold_in(jax.random.key(7), 2),
      trainer.reward,
      c.rl.rollout_chunks,
    )
    np.testing.assert_array_equal(batches[2][0].tokens, ref.tokens)
    np.testing.assert_array_equal(batches[2][0].logprobs, ref.logprobs)
    rollout.score(ref, trainer.reward)


def test_first_overlap_update_matches_sync(toy, monkeypatch):
  """Update 0 of every pipeline learns from the same rollout (theta_0): the
  behaviour weights and the 'behaviour' objective's ratio differ from 1 only
  by the sampler's vs the teacher-forced log-prob rounding."""
  _, model, params = toy
  out, batches = {}, {}
  build_batch = loop.Trainer.build_batch

  def recording_build_batch(self, *a, **kw):
    batch, stats = build_batch(self, *a, **kw)
    batches[name] = batch
    return batch, stats

  monkeypatch.setattr(loop.Trainer, 'build_batch', recording_build_batch)
  for name in ('sync', 'overlap', 'overlap/behaviour'):
    c = rl_config('vanilla')
    c.rl.pipeline = name.split('/')[0]
    if name == 'overlap/behaviour':
      c.rl.off_policy.objective = 'behaviour'
    c.rl.num_updates = 1
    with OcrPool(ReadsWhenBright, num_workers=0) as pool:
      trainer = loop.Trainer(c, model, params, pool)
      metrics, ro, _, _ = _pipe(c, trainer).run(0)
    out[name] = (_leaves(trainer.state.params), ro.tokens, metrics)
  np.testing.assert_array_equal(out['sync'][1], out['overlap'][1])
  moved = max(
    np.abs(a - b).max()
    for a, b in zip(out['sync'][0], jax.tree.leaves(params['transformer']))
  )
  assert moved > 1e-4
  for name in ('overlap', 'overlap/behaviour'):
    apart = max(np.abs(a - b).max() for a, b in zip(out['sync'][0], out[name][0]))
    assert apart <= 0.01 * moved, (name, apart, moved)
  assert out['overlap'][2]['time/update_s'] > 0
  # The decoupled objective's weights: pi_theta0 / pi_behaviour = 1 up to
  # rounding. 'behaviour': log pi_old is the sampler's record, no weights.
  assert abs(out['overlap'][2]['train/off_policy/iw'] - 1.0) < 1e-3
  assert 'train/off_policy/iw' not in out['sync'][2]
  assert 'train/off_policy/iw' not in out['overlap/behaviour'][2]
  assert 'behaviour_logp' not in batches['sync']
  assert 'behaviour_logp' not in batches['overlap/behaviour']
  assert float(batches['overlap/behaviour']['on_policy']) == 0.0


@pytest.fixture(scope='module')
def straight_overlap(tmp_path_factory):
  from varrl_jax import train

  path = tmp_path_factory.mktemp('straight_overlap')
  c = _train_config()
  c.rl.pipeline = 'overlap'
  c.rl.num_updates = 4
  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    train.train(c, str(path), pool=pool)
  return path


def test_overlap_sigterm_resume_is_bit_identical(
  tmp_path, straight_overlap, monkeypatch
):
  from varrl_jax import train
  from varrl_jax.writers import read_jsonl

  c = _train_config()
  c.rl.pipeline = 'overlap'
  c.rl.num_updates = 4
  c.checkpoint.every = 100  # only the SIGTERM save and the final one
  run = pipeline.Overlap.run

  def preempted_during_update_1(self, update):
    if update == 1:
      os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-update
    return run(self, update)

  monkeypatch.setattr(pipeline.Overlap, 'run', preempted_during_update_1)
  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    with pytest.raises(train.Preempted) as e:
      train.train(c, str(tmp_path), pool=pool)
  assert e.value.code == 128 + signal.SIGTERM
  assert os.listdir(tmp_path / 'checkpoints' / 'state') == ['2']
  monkeypatch.undo()
  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    train.train(c, str(tmp_path), pool=pool)
  _assert_bitwise_equal(_final_params(tmp_path), _final_params(straight_overlap))
  steps = [r['step'] for r in read_jsonl(str(tmp_path / 'metrics.jsonl'))]
  assert steps == [0, 1, 2, 3]
  # The resumed run's rewards are those of the uninterrupted one: the same
  # rollouts (update 2's resampled from the saved behaviour params).
  straight = read_jsonl(str(straight_overlap / 'metrics.jsonl'))
  resumed = read_jsonl(str(tmp_path / 'metrics.jsonl'))
  assert [r['reward/mean'] for r in resumed] == [r['reward/mean'] for r in straight]


def test_resume_refuses_another_pipeline(tmp_path, straight_overlap):
  from varrl_jax import train

  c = _train_config()
  c.rl.num_updates = 5
  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    with pytest.raises(
      checkpoint.CheckpointError, match=r"config\.rl\.pipeline='overlap'"
    ):
      import shutil

      shutil.copytree(straight_overlap / 'checkpoints', tmp_path / 'checkpoints')
      train.train(c, str(tmp_path), pool=pool)


def test_unknown_pipeline_is_refused_before_anything_loads(tmp_path):
  from varrl_jax import train

  c = _train_config()
  c.rl.pipeline = 'async'
  with pytest.raises(
    ValueError,
    match=r"config\.rl\.pipeline must be one of \['sync', 'overlap'\], got 'async'",
  ):
    train.train(c, str(tmp_path))
  assert not os.path.exists(tmp_path / 'metrics.jsonl')
