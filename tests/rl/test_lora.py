"""LoRA for RL (`varrl_jax.rl.lora`): targets of both families, the merge
against its definition, only adapters train, the reference is the base, rank
0 is full fine-tuning untouched, exact resume, merged and separate export."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.models import var_fixture
from tests.rl.test_grpo import OPTS
from tests.rl.test_grpo import _batch as toy_batch
from tests.rl.test_loop import PROMPTS, ReadsWhenBright, rl_config
from varrl_jax import checkpoint
from varrl_jax.config import base_config
from varrl_jax.models.family import build_model
from varrl_jax.rewards.pool import OcrPool
from varrl_jax.rl import grpo, loop, lora_io
from varrl_jax.rl import lora as lora_lib

TARGETS = base_config().rl.lora.targets


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_bitwise(a, b):
  la, lb = _leaves(a), _leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(x, y)


def _boxed(model):
  return jax.eval_shape(model.init_boxed, jax.random.key(0))['transformer']


def _split(targets):
  return {
    '/'.join(t.path[1:]): (t.lead, t.fan_in, t.fan_out, t.a_names, t.b_names)
    for t in targets
  }


def test_default_targets_cover_both_families_split_by_logical_axes(toy):
  _, model, _ = toy
  got = _split(lora_lib.find_targets(_boxed(model), TARGETS))
  names = ('q', 'k', 'v', 'o', 'wi_gate', 'wi_up', 'wo')
  assert set(got) == {f'layers/{n}/kernel' for n in names}
  # q [L, embed, heads, kv] reads embed; o [L, heads, kv, embed] reads (heads, kv).
  assert got['layers/q/kernel'][:3] == ((2,), (32,), (4, 8))
  assert got['layers/o/kernel'][:3] == ((2,), (4, 8), (32,))
  assert got['layers/wo/kernel'][:3] == ((2,), (64,), (32,))
  # A shards like the kernel's input axes, B like its outputs; r never.
  assert got['layers/q/kernel'][3:] == (
    ('layers', 'embed', 'lora_rank'),
    ('layers', 'lora_rank', 'heads', 'kv'),
  )
  var = _split(
    lora_lib.find_targets(_boxed(var_fixture.model_and_params()[0]), TARGETS)
  )
  assert set(var) == {f'blocks/{n}/kernel' for n in ('qkv', 'proj', 'fc1', 'fc2')}
  assert var['blocks/qkv/kernel'][:3] == ((2,), (128,), (3, 2, 64))
  assert var['blocks/proj/kernel'][:3] == ((2,), (2, 64), (128,))

  c = base_config().rl.lora
  assert lora_lib.from_config(c, model) is None  # rank 0: nothing is built
  c.rank, c.targets = 4, r'.*/nothing/kernel'
  with pytest.raises(ValueError, match=r'config.rl.lora.targets=.* matches no'):
    lora_lib.from_config(c, model)
  c.rank = -1
  with pytest.raises(ValueError, match='config.rl.lora.rank must be >= 0'):
    lora_lib.from_config(c, model)


def _random_adapters(lora, seed=1):
  """Adapters with nonzero B (a trained-looking state)."""
  adapters = lora.init(jax.random.key(seed))
  keys = iter(jax.random.split(jax.random.key(seed + 1), 64))
  return jax.tree_util.tree_map_with_path(
    lambda p, x: (
      jax.random.normal(next(keys), x.shape) * 0.1 if p[-1].key == 'lora_b' else x
    ),
    adapters,
  )


def _reference_merge(lora, base, adapters):
  """W + (alpha / r) A B in numpy, by contracting r of the unflattened factors."""
  out = jax.tree.map(np.asarray, base)
  for t in lora.targets:
    node_w, node_a = out, adapters
    for k in t.path[:-1]:
      node_w, node_a = node_w[k], node_a[k]
    a = np.asarray(node_a[t.path[-1]]['lora_a'])
    b = np.asarray(node_a[t.path[-1]]['lora_b'])
    delta = np.stack(
      [np.tensordot(a[i], b[i], axes=([a.ndim - 2], [0])) for i in range(a.shape[0])]
    )
    node_w[t.path[-1]] = node_w[t.path[-1]] + lora.scale * delta
  return out


def test_merge_is_base_plus_scaled_low_rank_product(toy):
  _, model, params = toy
  lora = lora_lib.for_model(model, 3, 6.0, TARGETS)
  assert lora.scale == 2.0
  adapters = _random_adapters(lora)
  merged = jax.jit(lora.merge)(params['transformer'], adapters)
  want = _reference_merge(lora, params['transformer'], adapters)
  for x, y in zip(_leaves(merged), _leaves(want)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  # Only the targets move; a fresh init (B = 0) is the base bit for bit.
  moved = [
    not np.array_equal(x, y)
    for x, y in zip(_leaves(merged), _leaves(params['transformer']))
  ]
  assert sum(moved) == len(lora.targets)
  _assert_bitwise(
    lora.merge(params['transformer'], lora.init(jax.random.key(0))),
    params['transformer'],
  )


def test_grpo_step_trains_only_the_adapters_from_the_reference(toy):
  config, model, params = toy
  lora = lora_lib.for_model(model, 4, 8.0, TARGETS)
  # A step large enough for a KL well above float32 rounding of e^r - r - 1.
  rl = config.rl.copy_and_resolve_references()
  rl.lr = 3e-3
  optimizer = grpo.make_optimizer(rl)
  step = grpo.make_train_step(
    model, OPTS, grpo.GrpoHParams(), optimizer, 0.6, lora=lora
  )
  base = jax.tree.map(jnp.array, params['transformer'])
  before = _leaves(base)
  adapters = lora.init(jax.random.key(3))
  state = grpo.init_state(jax.tree.map(jnp.array, adapters), optimizer)
  # Optimizer moments exist for the adapters only.
  n_adapter = sum(x.size for x in _leaves(adapters))
  assert sum(x.size for x in _leaves(state.opt_state)) <= 2 * n_adapter + 8
  batch = toy_batch(model, params)
  state, metrics, logp = step(state, batch, base)
  # B = 0: the policy is the base, which is the reference: KL 0, rho 1.
  np.testing.assert_allclose(logp, batch['ref_logp'], atol=1e-5)
  assert float(metrics['kl']) < 1e-8 and float(metrics['ratio']) == 1.0
  batch = dict(batch, old_logp=logp, on_policy=jnp.array(0.0))
  moved = jax.tree.map(np.array, state.params)  # the adapters after step 1
  state, metrics, logp = step(state, batch, base)
  assert int(state.step) == 2
  for x, y in zip(_leaves(base), before):  # not donated, not changed
    np.testing.assert_array_equal(x, y)
  for x, y in zip(_leaves(state.params), _leaves(adapters)):
    assert not np.array_equal(x, y)  # every A and B moved
  # Step 2 scores the policy W + (alpha / r) B A of step 1's adapters: the
  # reference log-prob function on the merged weights gives the same, and the
  # KL metric is the masked mean of k3 = e^r - r - 1, r = log pi_ref - log pi.
  merged = lora.merge(base, jax.tree.map(jnp.asarray, moved))
  want = grpo.make_logprob_fn(model, OPTS)(
    merged, batch['cond'], batch['inputs'], batch['tokens']
  )
  np.testing.assert_allclose(logp, want, atol=1e-5)
  r = np.asarray(batch['ref_logp'], np.float64) - np.asarray(logp, np.float64)
  w = np.asarray(batch['mask']) * (np.asarray(batch['weights'])[None] > 0)
  kl = ((np.exp(r) - r - 1) * w).sum() / w.sum()
  assert kl > 1e-4  # the policy moved away from the reference
  np.testing.assert_allclose(float(metrics['kl']), kl, rtol=1e-3, atol=1e-9)


def test_var_family_trains_adapters_only():
  model, params = var_fixture.model_and_params()
  c = var_fixture.config()
  c.rl.lora.rank = 2
  lora = lora_lib.from_config(c.rl.lora, model)
  optimizer = grpo.make_optimizer(c.rl)
  step = grpo.make_train_step(
    model, OPTS, grpo.GrpoHParams(), optimizer, 0.6, lora=lora
  )
  rng = np.random.default_rng(0)
  n = model.schedule.num_tokens
  tokens = jnp.asarray(rng.integers(0, c.tokenizer.codebook_size, (2, n)), jnp.int32)
  cond = jax.tree.map(jnp.asarray, model.encode_prompts(['3', '207']))
  inputs = model.teacher_inputs(params, tokens)
  ref = grpo.make_logprob_fn(model, OPTS)(params['transformer'], cond, inputs, tokens)
  batch = {
    'cond': cond,
    'inputs': inputs,
    'tokens': tokens,
    'old_logp': ref,
    'ref_logp': ref,
    'advantages': jnp.array([1.0, -1.0]),
    'mask': jnp.ones((2, n)),
    'weights': jnp.ones((n,)) / n,
    'on_policy': jnp.array(1.0),
  }
  before = _leaves(params['transformer'])
  state = grpo.init_state(lora.init(jax.random.key(0)), optimizer)
  state, metrics, logp = step(state, batch, params['transformer'])
  np.testing.assert_allclose(logp, ref, atol=1e-5)  # the base is the reference
  assert np.isfinite(float(metrics['loss']))
  for x, y in zip(_leaves(params['transformer']), before):
    np.testing.assert_array_equal(x, y)
  b = state.params['params']['blocks']['qkv']['kernel']['lora_b']
  assert b.shape == (2, 2, 3, 2, 64) and float(jnp.abs(b).max()) > 0


def _trainer(config, params, updates, pool):
  trainer = loop.Trainer(config, build_model(config), params, pool)
  for u in range(updates):
    trainer.run_update(u, PROMPTS, jax.random.key(u))
  return trainer


@pytest.fixture
def pool():
  with OcrPool(ReadsWhenBright, num_workers=0) as p:
    yield p


def test_trainer_reference_resume_and_export(toy, pool, tmp_path):
  from varrl_jax import export, train

  _, model, params = toy
  base_dir = checkpoint.save_params(str(tmp_path / 'base'), params, {'stage': 'test'})
  c = rl_config('vanilla')
  c.init_checkpoint = base_dir
  c.rl.lora.rank, c.rl.lr = 4, 1e-2
  t = _trainer(c, params, 1, pool)
  states = checkpoint.TrainCheckpoints(str(tmp_path / 'state'), 2)
  states.save(1, t.state, {})
  t.run_update(1, PROMPTS, jax.random.key(1))
  # Resume: a new trainer restores the adapters and their optimizer state.
  t2 = loop.Trainer(c, model, params, pool)
  t2.state = states.restore_latest(t2.state)[0]
  states.close()
  t2.run_update(1, PROMPTS, jax.random.key(1))
  _assert_bitwise(t2.state, t.state)
  assert jax.tree.structure(t.state.params) == jax.tree.structure(
    t.lora.init(jax.random.key(0))
  )

  # The reference is the base params, unchanged and not copied by the loop.
  _assert_bitwise(t.ref_params, params['transformer'])
  assert t.ref_fingerprint == checkpoint.fingerprint(params['transformer'])
  ro = t.rollout(PROMPTS, jax.random.key(7))
  batch, _ = t.build_batch(ro, loop.rollout.score(ro, t.reward), 'full')
  logp_fn = grpo.make_logprob_fn(model, t.opts)
  args = (batch['cond'], batch['inputs'], batch['tokens'])
  np.testing.assert_array_equal(
    batch['ref_logp'], logp_fn(params['transformer'], *args)
  )

  # The final checkpoint holds the merged params and the adapters; merged
  # export = base + (alpha / r) A B, with the in-training log-probs.
  final = train._save(c, t, str(tmp_path), 'final', 2, {})
  merged_dir, separate_dir = str(tmp_path / 'merged'), str(tmp_path / 'separate')
  for mode, dest in (('merged', merged_dir), ('separate', separate_dir)):
    export.export(c, final, dest, 'float32', {}, 'test', lora=mode)
  merged = checkpoint.load_params(merged_dir, model)
  _assert_bitwise(merged['tokenizer'], params['tokenizer'])
  adapters = lora_io.load_adapters(final, t.lora)
  _assert_bitwise(adapters, t.state.params)
  want = _reference_merge(t.lora, params['transformer'], adapters)
  for x, y in zip(_leaves(merged['transformer']), _leaves(want)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  assert not np.array_equal(
    merged['transformer']['params']['layers']['q']['kernel'],
    params['transformer']['params']['layers']['q']['kernel'],
  )
  # Inside another jit: the log-probs compiled without compiler options.
  nested_fn = grpo.make_logprob_fn(model, t.opts, nestable=True)
  in_training = jax.jit(lambda b, a, *xs: nested_fn(t.lora.merge(b, a), *xs))(
    params['transformer'], t.state.params, *args
  )
  np.testing.assert_allclose(
    logp_fn(merged['transformer'], *args), in_training, atol=1e-5
  )
  # Separate: adapters only, merged onto the named base when loaded.
  assert checkpoint.read_manifest(separate_dir)['parts'] == ['lora']
  _assert_bitwise(checkpoint.load_params(separate_dir, model), merged)
  with pytest.raises(checkpoint.CheckpointError, match='no LoRA adapters'):
    export.export(c, base_dir, separate_dir, 'float32', {}, 'test', lora='separate')
  changed = jax.tree.map(lambda x: x + 1, params)
  checkpoint.save_params(base_dir, changed, {'stage': 'test'})
  with pytest.raises(checkpoint.CheckpointError, match='other weights'):
    checkpoint.load_params(separate_dir, model)


def test_rank0_builds_no_adapters(toy, pool, monkeypatch):
  _, _, params = toy

  def no_adapters(*args, **kwargs):
    raise AssertionError('adapters built at rank 0')

  # Rank 0 never reads the other LoRA keys (invalid here) nor builds adapters.
  monkeypatch.setattr(lora_lib, 'for_model', no_adapters)
  monkeypatch.setattr(lora_lib, 'init_from_config', no_adapters)
  c0 = rl_config('vanilla')
  c0.rl.lora.alpha, c0.rl.lora.targets = -1.0, 'no such kernel'
  t0 = _trainer(c0, params, 1, pool)
  assert t0.lora is None and t0.checkpoint_parts()[1] == {}
  # Full fine-tuning: the state holds every transformer parameter, all moved.
  assert jax.tree.structure(t0.state.params) == jax.tree.structure(
    params['transformer']
  )
  assert all(
    not np.array_equal(x, y)
    for x, y in zip(_leaves(t0.state.params), _leaves(params['transformer']))
  )


def test_resume_refuses_other_lora_settings(tmp_path):
  """A workdir saved with one LoRA layout is not resumed with another (alpha
  alone would silently change W' from the same arrays)."""
  from types import SimpleNamespace

  from varrl_jax import train

  trainer = SimpleNamespace(state={'x': jnp.zeros(2)}, ref_fingerprint='digest')
  saved = base_config()
  saved.rl.lora.rank = 4
  states = checkpoint.TrainCheckpoints(str(tmp_path / 'states'), 2)
  try:
    states.save(3, trainer.state, train._run_record(saved, trainer, 3))
    for key, value in (('alpha', 8.0), ('rank', 0), ('rank', 8)):
      other = base_config()
      other.rl.lora.rank = 4
      other.rl.lora[key] = value
      with pytest.raises(checkpoint.CheckpointError, match=r'config\.rl\.lora'):
        train._resume(other, trainer, states)
    assert train._resume(saved, trainer, states) == 3
  finally:
    states.close()
