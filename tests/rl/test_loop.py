"""The RL host loop end to end on the toy model with an injected OCR engine."""

import os

import jax
import numpy as np
import pytest

from tests.conftest import toy_config
from varrl_jax.models.family import build_model
from varrl_jax.rewards.pool import OcrPool
from varrl_jax.rewards.types import OcrResult, OcrWord
from varrl_jax.rl import loop


class ReadsWhenBright:
  """Reads 'OPEN' when the top-left pixel is bright: rewards vary across samples."""

  def read(self, image):
    if int(image[0, 0].mean()) > 127:
      return OcrResult(words=(OcrWord('OPEN', (0.0, 0.0, 8.0, 8.0), 0.9),))
    return OcrResult(words=(OcrWord('QQ', (20.0, 8.0, 30.0, 16.0), 0.5),))


class AlwaysFails:
  def read(self, image):
    raise RuntimeError('engine broke')


def rl_config(mode='full'):
  c = toy_config()
  c.rl.mode = mode
  c.rl.prompts_per_update = 2
  c.rl.group_size = 2
  c.rl.vmr.num_branches = 2
  c.rl.vmr.m = '1'
  c.rl.rollout_chunks = 2
  c.rl.inner_updates = 2
  c.rl.lr = 1e-3
  c.sampling.cfg_scale = 2.0
  c.sampling.top_k = 8
  return c


PROMPTS = [
  ("a sign that reads 'OPEN'", ('OPEN',)),
  ("a poster that reads 'SALE'", ('SALE',)),
]


def test_phase_schedule():
  m = loop.Method(True, True, True, 1, 0.6)
  assert [loop.phase_of(u, m, 3, 1) for u in range(8)] == ['prefix'] * 3 + [
    'suffix'
  ] + ['prefix'] * 3 + ['suffix']
  assert (
    loop.phase_of(299, m, 300, 100) == 'prefix'
    and loop.phase_of(300, m, 300, 100) == 'suffix'
  )
  vanilla = loop.Method(False, False, False, 2, 0.0)
  assert loop.phase_of(3, vanilla, 3, 1) == 'full'


def test_modes_resolve_components(toy):
  _, model, _ = toy
  full = loop.Method.from_config(rl_config('full'), model)
  assert (full.use_vmr, full.use_panw, full.use_mp, full.m, full.alpha) == (
    True,
    True,
    True,
    1,
    0.6,
  )
  van = loop.Method.from_config(rl_config('vanilla'), model)
  assert (van.use_vmr, van.use_panw, van.use_mp, van.m, van.alpha) == (
    False,
    False,
    False,
    2,
    0.0,
  )
  c = rl_config('vmr')
  c.rl.vmr.m = 'full'  # a split at the last scale is full-horizon GRPO
  assert not loop.Method.from_config(c, model).use_vmr
  c.rl.mode = 'grpo'
  with pytest.raises(ValueError, match='config.rl.mode must be one of'):
    loop.Method.from_config(c, model)


def _run(mode, updates, params, engine=ReadsWhenBright, config=None):
  config = config or rl_config(mode)
  model = build_model(config)
  with OcrPool(engine, num_workers=0) as pool:
    trainer = loop.Trainer(config, model, params, pool)
    out = [trainer.run_update(u, PROMPTS, jax.random.key(u)) for u in range(updates)]
  return trainer, out


@pytest.mark.parametrize('mode', ['full', 'vanilla'])
def test_updates_run_and_are_deterministic(toy, mode):
  _, _, params = toy
  trainer, out = _run(mode, 2 if mode == 'vanilla' else 4, params)
  metrics, ro, scored, phase = out[0]
  p, g, k = ro.shape
  assert (p, g) == (2, 2) and k == (2 if mode == 'full' else 1)
  assert ro.images.shape == (p * g * k, 16, 32, 3)
  for key in (
    'reward/mean',
    'adv/std',
    'train/loss',
    'train/kl',
    'scale0/grad_share',
    'scale2/mask_coverage',
  ):
    assert key in metrics and np.isfinite(metrics[key]), key
  phases = [o[3] for o in out]
  assert phases == (['prefix'] * 3 + ['suffix'] if mode == 'full' else ['full'] * 2)
  if mode == 'full':
    assert 'vmr/value_mean' in metrics
    # Prefix updates touch no suffix token.
    assert metrics['scale2/grad_share'] == 0.0 and out[3][0]['scale0/grad_share'] == 0.0
  before = jax.tree.leaves(params['transformer'])
  after = jax.tree.leaves(trainer.state.params)
  assert (
    max(
      float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(after, before)
    )
    > 0
  )
  trainer2, _ = _run(mode, 2 if mode == 'vanilla' else 4, params)
  for a, b in zip(after, jax.tree.leaves(trainer2.state.params)):
    np.testing.assert_array_equal(a, b)


def test_failed_ocr_gets_fallback_and_nan_stops(toy):
  _, _, params = toy
  c = rl_config('full')
  c.rl.reward.fallback = 0.25
  _, out = _run('full', 1, params, engine=AlwaysFails, config=c)
  metrics = out[0][0]
  assert metrics['reward/mean'] == pytest.approx(0.25) and metrics['ocr/failures'] == 8
  c.rl.reward.fallback = float('nan')
  with pytest.raises(loop.NonFiniteError, match='non-finite reward at update 0'):
    _run('full', 1, params, engine=AlwaysFails, config=c)


def _train_config():
  c = rl_config('full')
  c.rl.num_updates = 2
  c.rl.inner_updates = 1
  c.eval.num_prompts = 2
  c.eval.batch_size = 2
  c.eval.grid_images = 2
  return c


def test_train_writes_metrics_masks_grid_and_checkpoint(tmp_path):
  from varrl_jax import train
  from varrl_jax.writers import read_jsonl

  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    result = train.train(_train_config(), str(tmp_path), pool=pool)
  records = read_jsonl(str(tmp_path / 'metrics.jsonl'))
  assert [r['step'] for r in records] == [0, 1]
  for key in (
    'reward/mean',
    'reward/std',
    'vmr/value_mean',
    'adv/std',
    'scale0/kl',
    'scale1/entropy',
    'scale2/ratio',
    'scale0/clip_frac',
    'scale1/grad_share',
    'scale2/panw_weight',
    'scale2/mask_coverage',
  ):
    assert key in records[0], key
  assert (tmp_path / 'masks.png').exists() and (tmp_path / 'before_after.png').exists()
  assert (tmp_path / 'checkpoints' / 'final' / 'manifest.json').exists()
  assert 0.0 <= result['after'].word_accuracy <= 1.0


def test_nan_reward_stops_after_saving_a_checkpoint(tmp_path):
  from varrl_jax import train

  c = _train_config()
  c.rl.reward.fallback = float('nan')
  with OcrPool(AlwaysFails, num_workers=0) as pool:
    with pytest.raises(
      loop.NonFiniteError, match='checkpoint saved to .*nonfinite_update0'
    ):
      train.train(c, str(tmp_path), pool=pool)
  assert (tmp_path / 'checkpoints' / 'nonfinite_update0' / 'manifest.json').exists()


def test_prefix_mask_is_built_from_the_union_of_branch_boxes(toy):
  """Regression: a branch without boxes must not turn the prefix mask into all ones."""
  import dataclasses

  from varrl_jax.rl import rollout as rollout_lib

  _, model, params = toy
  config = rl_config('full')
  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    trainer = loop.Trainer(config, model, params, pool)
    ro = trainer.rollout(PROMPTS, jax.random.key(0))
    scored = rollout_lib.score(ro, trainer.reward)
  # Branch 0 of every prefix saw text in the top-left corner, branch 1 none.
  boxes = [[(0.0, 0.0, 8.0, 8.0)] if i % 2 == 0 else [] for i in range(len(ro.prompts))]
  scored = dataclasses.replace(scored, boxes=boxes)
  batch, stats = trainer.build_batch(ro, scored, 'prefix')
  mask = np.asarray(batch['mask'])
  prefix_tokens = model.schedule.offsets[2]  # m = 1: scales 0 and 1
  assert (mask[:, prefix_tokens:] == 0).all()
  assert 0 < stats['mask/coverage'] < 1
  assert mask[:, prefix_tokens - 1].max() == 0  # the far corner of scale 1


def test_non_finite_step_leaves_the_state_unchanged(toy):
  from varrl_jax.rl import rollout as rollout_lib

  _, model, params = toy
  c = rl_config('vanilla')
  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    trainer = loop.Trainer(c, model, params, pool)
    ro = trainer.rollout(PROMPTS, jax.random.key(0))
    scored = rollout_lib.score(ro, trainer.reward)
  batch, _ = trainer.build_batch(ro, scored, 'full')
  before = [np.asarray(x).copy() for x in jax.tree.leaves(trainer.state.params)]
  bad = dict(batch, advantages=batch['advantages'].at[0].set(np.nan))
  metrics = trainer.update(bad)
  assert not np.isfinite(metrics['loss'])
  for a, b in zip(before, jax.tree.leaves(trainer.state.params)):
    np.testing.assert_array_equal(a, b)
  assert int(trainer.state.step) == 0


def _final_params(path):
  from varrl_jax import checkpoint

  model = build_model(_train_config())
  return checkpoint.load_params(str(path / 'checkpoints' / 'final'), model)


def _assert_bitwise_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_refuses_another_reference(tmp_path):
  from varrl_jax import checkpoint, train

  c = _train_config()
  c.rl.mode = 'vanilla'  # one phase: one compile
  c.rl.num_updates = 1
  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    train.train(c, str(tmp_path), pool=pool)
  c.seed = 1  # another random init: another reference policy
  c.rl.num_updates = 2
  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    with pytest.raises(checkpoint.CheckpointError, match='saved with reference'):
      train.train(c, str(tmp_path), pool=pool)


def test_resume_of_a_state_with_an_older_reference_digest(tmp_path, caplog):
  """A state saved before `checkpoint.FINGERPRINT_VERSION` (float digests,
  which differed per mesh) resumes with a warning instead of a false refusal."""
  import glob
  import json

  from varrl_jax import train

  c = _train_config()
  c.rl.mode = 'vanilla'
  c.rl.num_updates = 1
  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    train.train(c, str(tmp_path), pool=pool)
  (path,) = [
    p
    for p in glob.glob(str(tmp_path / 'checkpoints' / 'state' / '*' / 'record' / '*'))
    if 'reference_fingerprint' in open(p).read()
  ]
  with open(path) as f:
    record = json.load(f)
  del record['reference_fingerprint_version']
  record['reference_fingerprint'] = '0123456789abcdef'  # an old-style digest
  with open(path, 'w') as f:
    json.dump(record, f)
  c.rl.num_updates = 2
  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    train.train(c, str(tmp_path), pool=pool)
  assert any('older varrl_jax' in r.getMessage() for r in caplog.records)
  assert sorted(os.listdir(tmp_path / 'checkpoints' / 'state')) == ['1', '2']


def _jpeg_config(updates):
  """No OCR anywhere: the JPEG reward on class-id prompts (the toy model
  reads them as text)."""
  c = _train_config()
  c.rl.rewards = 'jpeg_compressibility'
  c.rl.prompts = 'classes:3,5,7,11,13'
  c.rl.num_updates = updates
  return c


def test_jpeg_reward_without_ocr_logs_terms_warns_once_and_resumes_exactly(
  tmp_path, monkeypatch, caplog, capsys
):
  import json

  from varrl_jax import train
  from varrl_jax.eval import reward_eval
  from varrl_jax.rewards import service
  from varrl_jax.writers import read_jsonl

  def no_ocr(*args, **kwargs):
    raise AssertionError('an OCR pool was made for a run without an ocr term')

  monkeypatch.setattr(service, 'make_pool', no_ocr)
  straight, split = tmp_path / 'straight', tmp_path / 'split'
  result = train.train(_jpeg_config(2), str(straight))

  # MP has no regions to work with: all-ones masks, and one warning per run.
  warnings = [r for r in caplog.records if 'gives no regions' in r.getMessage()]
  assert len(warnings) == 1, [r.getMessage() for r in warnings]
  records = read_jsonl(str(straight / 'metrics.jsonl'))
  assert [r['step'] for r in records] == [0, 1]
  for r in records:
    assert r['mask/coverage'] == 1.0
    assert r['reward/jpeg_compressibility/mean'] == pytest.approx(r['reward/mean'])
    assert r['reward/jpeg_compressibility/std'] == pytest.approx(r['reward/std'])
    assert r['reward/jpeg_compressibility/adv_share'] == pytest.approx(1.0)
    assert r['reward/mean'] < 0 and r['reward/std'] > 0  # minus kilobytes, varied
    assert not any(k.startswith('ocr/') or k == 'reward/comp' for k in r), sorted(r)

  # The held-out evaluation reports the reward.
  before, after = result['before'], result['after']
  assert isinstance(after, reward_eval.RewardSummary) and after.n_images == 2
  assert set(after.terms) == {'jpeg_compressibility'} and after.mean < 0
  out = capsys.readouterr().out
  assert 'held-out before: reward ' in out and '(jpeg_compressibility ' in out
  assert f'held-out {before.change(after)}' in out
  with open(straight / 'eval_after' / 'metrics.json') as f:
    flat = json.load(f)['metrics']
  assert flat['reward/jpeg_compressibility/mean'] == pytest.approx(after.mean)
  assert (straight / 'before_after.png').exists() and (straight / 'masks.png').exists()

  # One update, then a second run continues: the same weights bit for bit.
  train.train(_jpeg_config(1), str(split))
  train.train(_jpeg_config(2), str(split))
  _assert_bitwise_equal(_final_params(split), _final_params(straight))
  assert [r['step'] for r in read_jsonl(str(split / 'metrics.jsonl'))] == [0, 1]


def test_bad_reward_or_prompts_fail_before_any_compile(tmp_path, monkeypatch):
  from varrl_jax import train

  def no_weights(*args, **kwargs):
    raise AssertionError('weights were loaded before the config was checked')

  monkeypatch.setattr(train, 'load_weights', no_weights)
  c = _jpeg_config(1)
  c.rl.rewards = 'jpeg:1'
  with pytest.raises(
    ValueError, match=r"config.rl.rewards='jpeg:1': 'jpeg:1': unknown"
  ):
    train.train(c, str(tmp_path))
  c = _jpeg_config(1)
  c.rl.prompts = 'classes:5,1000'
  with pytest.raises(ValueError, match='class 1000 is out of range'):
    train.train(c, str(tmp_path))


def test_prefix_update_runs_on_the_prefix_positions_only(toy):
  """A prefix batch holds the positions of scales <= m alone; its reference
  log-probs and its step equal those of the full-length batch whose mask and
  weights are zero past the prefix (the logits are block-causal)."""
  import jax.numpy as jnp

  from varrl_jax.rl import rollout as rollout_lib

  _, model, params = toy
  c = rl_config('full')
  sched = model.schedule
  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    trainer = loop.Trainer(c, model, params, pool)
    ro = trainer.rollout(PROMPTS, jax.random.key(0))
    scored = rollout_lib.score(ro, trainer.reward)
  batch, _ = trainer.build_batch(ro, scored, 'prefix')
  n = int(sched.offsets[trainer.method.m + 1])
  assert n < sched.num_tokens
  assert batch['tokens'].shape[1] == batch['inputs'].shape[1] == n
  assert batch['mask'].shape[1] == batch['weights'].shape[0] == n

  rows = np.arange(0, ro.tokens.shape[0], ro.shape[2])
  tokens = jnp.asarray(ro.tokens[rows])
  inputs = trainer.inputs_fn(trainer.tokenizer_params, tokens)
  pad = lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, sched.num_tokens - n)])  # noqa: E731
  full = dict(
    batch,
    tokens=tokens,
    inputs=inputs,
    old_logp=jnp.asarray(ro.logprobs[rows]),
    ref_logp=trainer.logprob_fn(trainer.ref_params, batch['cond'], inputs, tokens),
    mask=pad(batch['mask']),
    weights=pad(batch['weights']),
  )
  np.testing.assert_allclose(full['ref_logp'][:, :n], batch['ref_logp'], atol=1e-5)
  outs = [
    trainer.step_fn(jax.tree.map(jnp.copy, trainer.state), b) for b in (batch, full)
  ]
  (short, m_short, logp_short), (long, m_long, logp_long) = outs
  np.testing.assert_allclose(m_short['loss'], m_long['loss'], rtol=1e-5)
  np.testing.assert_allclose(logp_short, logp_long[:, :n], atol=1e-5)
  # The same update: the parameters' change differs by float rounding only.
  # Measured as a norm over all parameters: Adam divides by sqrt(v), so a
  # near-zero gradient's rounding (the two batches sum their rows in other
  # orders) moves its parameter by up to ~lr either way, and one element's
  # worst case says nothing about the update. Measured: the norm 0.01% of
  # the update's with YNNPACK's dots and chunked weight gradients, 0.14%
  # with XLA's dots and plain ones (session 20), all of it in the text
  # embedding rows and positions whose gradients are rounding noise; the
  # transformer layers' weights, whose gradients are clear, agree to 3e-6.
  flat = lambda tree: np.concatenate(  # noqa: E731
    [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)]
  )
  p0, a, b = flat(trainer.state.params), flat(short.params), flat(long.params)
  moved, apart = np.linalg.norm(a - p0), np.linalg.norm(a - b)
  print(f'update norm {moved:.3e}, short - long {apart:.3e}')
  assert np.abs(a - p0).max() > 1e-4 and apart <= 5e-3 * moved, (apart, moved)
  layers = [short.params['params']['layers'], long.params['params']['layers']]
  np.testing.assert_allclose(*(flat(x) for x in layers), rtol=0, atol=2e-5)
  # Per-scale metrics cover every scale; the ones past the prefix report 0.
  assert m_short['scale/kl'].shape == (sched.num_scales,)
  np.testing.assert_array_equal(m_short['scale/grad_share'][trainer.method.m + 1 :], 0)
