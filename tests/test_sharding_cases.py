"""Sharding cases; need 8 devices (tests/test_sharding.py runs them in a subprocess)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tests.conftest import toy_config
from varrl_jax import parallel, sampling
from varrl_jax.models.family import build_model
from varrl_jax.policy import SamplingOptions
from varrl_jax.rl import grpo, panw

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason='needs 8 (fake) devices')


def _config():
  c = toy_config()
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  return c


def test_shard_mesh_shape_and_fill():
  c = _config()
  assert parallel.make_mesh(c.mesh).shape == {'data': 2, 'fsdp': 2, 'tensor': 2}
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 2, 1
  assert parallel.mesh_shape(c.mesh, 8) == (4, 2, 1)
  c.mesh.tensor = 3
  with pytest.raises(ValueError, match='not divisible'):
    parallel.mesh_shape(c.mesh, 8)


def test_shard_every_parameter_follows_the_rules():
  c = _config()
  model = build_model(c)
  mesh = parallel.make_mesh(c.mesh)
  params, shardings = parallel.sharded_init(model, jax.random.key(0), mesh)
  layers = params['transformer']['params']['layers']
  assert layers['q']['kernel'].sharding.spec == P(None, 'fsdp', 'tensor', None)
  assert layers['k']['kernel'].sharding.spec == P(None, 'fsdp', None, None)
  assert layers['wi_gate']['kernel'].sharding.spec == P(None, 'fsdp', 'tensor')
  assert layers['wo']['kernel'].sharding.spec == P(None, 'tensor', 'fsdp')
  assert params['transformer']['params']['head']['kernel'].sharding.spec == P(
    'fsdp', 'tensor'
  )
  # Every boxed leaf's sharding is what its logical names map to.
  boxed = jax.eval_shape(model.init_boxed, jax.random.key(0))['transformer']
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  for leaf, arr in zip(leaves, jax.tree.leaves(params['transformer'])):
    expected = nn.logical_to_mesh_axes(leaf.names, parallel.LOGICAL_RULES)
    assert arr.sharding.spec == expected
  # Values equal the single-device init.
  single = model.init(jax.random.key(0))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(single)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_shard_sampler_gives_the_same_tokens():
  c = _config()
  model = build_model(c)
  mesh = parallel.make_mesh(c.mesh)
  params, _ = parallel.sharded_init(model, jax.random.key(0), mesh)
  single = model.init(jax.random.key(0))
  cond = model.encode_prompts(["a sign that reads 'OPEN'"] * 4)
  s = sampling.Sampler(model, SamplingOptions(cfg_scale=3.0, top_k=8))
  a = s.sample(single, cond, jax.random.key(1))
  sharded = parallel.shard_batch(mesh, cond, 4)
  b = s.sample(params, sharded, jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-5)


def test_shard_grpo_update_equals_single_device():
  """Loss, gradient norm and updated params match to 1e-5 (reduction order)."""
  c = _config()
  model = build_model(c)
  mesh = parallel.make_mesh(c.mesh)
  single = model.init(jax.random.key(0))
  opts = SamplingOptions(cfg_scale=3.0, top_k=8)
  cond = model.encode_prompts(["a sign that reads 'OPEN'", "a poster: 'SALE'"] * 2)
  out = sampling.Sampler(model, opts).sample(single, cond, jax.random.key(2))
  inputs = model.teacher_inputs(single, out.tokens)
  batch = {
    'cond': jax.tree.map(jnp.asarray, cond),
    'inputs': inputs,
    'tokens': out.tokens,
    'old_logp': out.logprobs,
    'ref_logp': out.logprobs,
    'advantages': jnp.asarray([1.0, -1.0, 0.5, -0.5]),
    'mask': jnp.ones(out.tokens.shape),
    'weights': jnp.asarray(panw.token_weights(model.schedule, 0.6)),
    'on_policy': jnp.array(1.0),
  }
  optimizer = grpo.make_optimizer(c.rl)
  step = grpo.make_train_step(model, opts, grpo.GrpoHParams(), optimizer, 0.6)
  copy = lambda t: jax.tree.map(jnp.array, t)  # noqa: E731
  s1, m1, _ = step(grpo.init_state(copy(single['transformer']), optimizer), batch)

  params, _ = parallel.sharded_init(model, jax.random.key(0), mesh)
  state = grpo.init_state(params['transformer'], optimizer)
  s2, m2, _ = step(state, parallel.shard_batch(mesh, batch, 4))
  np.testing.assert_allclose(float(m1['loss']), float(m2['loss']), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(float(m1['grad_norm']), float(m2['grad_norm']), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  # The updated parameters keep their shardings.
  q = s2.params['params']['layers']['q']['kernel']
  expected = NamedSharding(mesh, P(None, 'fsdp', 'tensor', None))
  assert q.sharding.is_equivalent_to(expected, q.ndim)


# -- explicit in/out shardings (parallel.mesh_jit) ------------------------------


def _grpo_batch(c, model, params, rows=4):
  """A GRPO batch on the host (numpy), from one single-device rollout."""
  opts = SamplingOptions(cfg_scale=3.0, top_k=8)
  prompts = ["a sign that reads 'OPEN'", "a poster: 'SALE'"] * (rows // 2)
  cond = model.encode_prompts(prompts)
  out = sampling.Sampler(model, opts).sample(params, cond, jax.random.key(2))
  inputs = model.teacher_inputs(params, out.tokens)
  batch = {
    'cond': cond,
    'inputs': inputs,
    'tokens': out.tokens,
    'old_logp': out.logprobs,
    'ref_logp': out.logprobs - 0.01,  # a nonzero KL term
    # Not zero-mean: the loss (-mean A at rho = 1) is then far from 0.
    'advantages': np.resize(np.float32([1.0, -0.5, 0.75, 0.25]), rows),
    'mask': np.ones(out.tokens.shape, np.float32),
    'weights': panw.token_weights(model.schedule, 0.6),
    'on_policy': np.float32(1.0),
  }
  return opts, jax.tree.map(np.asarray, batch)


def _place_batch(mesh, batch, model):
  return parallel.put(batch, grpo.batch_shardings(mesh, model))


@pytest.mark.parametrize('optimizer_name', ['sgd', 'adamw'])
def test_shard_explicit_train_step_matches_single_device(optimizer_name):
  """Loss, gradients and one update on a (2, 2, 2) mesh equal one device.

  With SGD at lr 1 the update is -grad, so the parameter change compares the
  gradients themselves. Tolerance: 1e-5 relative on the loss and gradient
  norm, 1e-6 absolute on gradients and SGD-updated parameters (|grad| <=
  ~0.1, |param| <= ~1): only the order of the sharded reductions differs.
  AdamW (lr 1e-3): 5e-5 on parameters, as its first step lr m / (sqrt(v) +
  eps) amplifies that rounding for gradient entries near 0.
  """
  c = _config()
  model = build_model(c)
  mesh = parallel.make_mesh(c.mesh)
  single = model.init(jax.random.key(0))
  opts, batch = _grpo_batch(c, model, single)
  if optimizer_name == 'sgd':
    optimizer = optax.sgd(1.0)
  else:
    c.rl.lr = 1e-3
    optimizer = grpo.make_optimizer(c.rl)
  hp = grpo.GrpoHParams()
  copy = lambda t: jax.tree.map(jnp.array, t)  # noqa: E731

  plain = grpo.make_train_step(model, opts, hp, optimizer, 0.6)
  s1, m1, lp1 = plain(grpo.init_state(copy(single['transformer']), optimizer), batch)

  step = grpo.make_train_step(model, opts, hp, optimizer, 0.6, mesh=mesh)
  shardings = grpo.state_shardings(model, optimizer, mesh)
  state = parallel.put(
    grpo.init_state(single['transformer'], optimizer), shardings, copy=True
  )
  s2, m2, lp2 = step(state, _place_batch(mesh, batch, model))

  np.testing.assert_allclose(float(m1['loss']), float(m2['loss']), rtol=1e-5)
  np.testing.assert_allclose(float(m1['grad_norm']), float(m2['grad_norm']), rtol=1e-5)
  for k in m1:
    np.testing.assert_allclose(
      np.asarray(m1[k]), np.asarray(m2[k]), rtol=1e-4, atol=1e-6
    )
  np.testing.assert_allclose(np.asarray(lp1), np.asarray(lp2), atol=1e-5)
  if optimizer_name == 'sgd':
    before = single['transformer']
    g1 = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), before, s1.params)
    g2 = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), before, s2.params)
    assert max(float(np.abs(g).max()) for g in jax.tree.leaves(g1)) > 1e-4
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
      np.testing.assert_allclose(a, b, atol=1e-6)
  param_tol = 1e-6 if optimizer_name == 'sgd' else 5e-5
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=param_tol)

  # Out shardings: the state's as declared (params by the rules, Adam's
  # moments like their params), metrics replicated, logp by rows.
  for arr, s in zip(jax.tree.leaves(s2), jax.tree.leaves(shardings)):
    assert arr.sharding.is_equivalent_to(s, arr.ndim)
  q = NamedSharding(mesh, P(None, 'fsdp', 'tensor', None))
  assert s2.params['params']['layers']['q']['kernel'].sharding.is_equivalent_to(q, 4)
  if optimizer_name == 'adamw':
    mu = s2.opt_state[1][0].mu['params']['layers']['q']['kernel']
    assert mu.sharding.is_equivalent_to(q, 4)
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(m2))
  assert lp2.sharding.is_equivalent_to(parallel.batch_sharding(mesh, 2), 2)
  # A second step takes the first one's outputs as they are (no resharding).
  s3, _, _ = step(
    s2,
    _place_batch(mesh, dict(batch, old_logp=lp2, on_policy=np.float32(0.0)), model),
  )
  assert int(s3.step) == 2


def test_shard_explicit_logprob_fn_matches_single_device():
  """The reference forward on the mesh: same log-probs (1e-5), rows sharded."""
  c = _config()
  model = build_model(c)
  mesh = parallel.make_mesh(c.mesh)
  single = model.init(jax.random.key(0))
  opts, batch = _grpo_batch(c, model, single)
  keys = ('cond', 'inputs', 'tokens')
  a = grpo.make_logprob_fn(model, opts)(
    single['transformer'], *(batch[k] for k in keys)
  )
  params = parallel.put(single, parallel.param_shardings(model, mesh))
  placed = _place_batch(mesh, batch, model)
  fn = grpo.make_logprob_fn(model, opts, mesh=mesh)
  b = fn(params['transformer'], *(placed[k] for k in keys))
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  np.testing.assert_allclose(np.asarray(a), batch['old_logp'], atol=1e-4)
  assert b.sharding.is_equivalent_to(parallel.batch_sharding(mesh, 2), 2)


def test_shard_explicit_sampler_gives_the_same_tokens():
  """Sampler(mesh=...): the same tokens as one device for the full sampler
  and for prefix + K branches; outputs sharded by rows, the params placed
  from wherever they are (here: one device)."""
  c = _config()
  model = build_model(c)
  mesh = parallel.make_mesh(c.mesh)
  single = model.init(jax.random.key(0))
  cond = model.encode_prompts(["a sign that reads 'OPEN'"] * 4)
  opts = SamplingOptions(cfg_scale=3.0, top_k=8)
  plain, sharded = (
    sampling.Sampler(model, opts),
    sampling.Sampler(model, opts, mesh=mesh),
  )
  a = plain.sample(single, cond, jax.random.key(1))
  b = sharded.sample(single, cond, jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-5)
  # The decode's reductions split differently over the mesh: up to one
  # uint8 level of rounding.
  np.testing.assert_allclose(
    np.asarray(a.images, np.int32), np.asarray(b.images, np.int32), atol=1, rtol=0
  )
  for x in (b.tokens, b.logprobs, b.images):
    assert x.sharding.is_equivalent_to(parallel.batch_sharding(mesh, x.ndim), x.ndim)

  params = parallel.put(single, parallel.param_shardings(model, mesh))
  state = sharded.sample_prefix(params, cond, jax.random.key(4), 0)
  assert state.cache['k'].sharding.spec == P(None, ('data', 'fsdp'))
  c2 = sharded.branch(params, state, jax.random.key(5), 0, 2)
  ref = plain.branch(
    single,
    plain.sample_prefix(single, cond, jax.random.key(4), 0),
    jax.random.key(5),
    0,
    2,
  )
  np.testing.assert_array_equal(np.asarray(ref.tokens), np.asarray(c2.tokens))
  with pytest.raises(ValueError, match='do not divide over data x fsdp'):
    sharded.sample(params, jax.tree.map(lambda x: x[:3], cond), jax.random.key(1))


def _trainer_config():
  from tests.rl.test_loop import rl_config

  c = rl_config('vanilla')
  c.rl.rollout_chunks = 1  # 4 rows per sampler call: divisible over data x fsdp
  c.rl.inner_updates = 1
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  return c


def test_shard_trainer_on_the_mesh_matches_one_device():
  """One RL update of `loop.Trainer` on a (2, 2, 2) mesh: the same rewards,
  loss and gradient norm (1e-5 relative) and parameters as on a one-device
  mesh; the trainer's state carries the rule shardings.

  Parameters agree to 5e-5 = 5 % of the lr: Adam's first step is
  lr m / (sqrt(v) + eps), which for a gradient entry near 0 amplifies the
  reduction-order rounding (observed: 7e-6 on 1 of 4096 entries).
  """
  from tests.rl.test_loop import PROMPTS, ReadsWhenBright
  from varrl_jax.rewards.pool import OcrPool
  from varrl_jax.rl import loop

  c = _trainer_config()
  model = build_model(c)
  params = model.init(jax.random.key(0))
  one_device = np.asarray(jax.devices()[:1]).reshape(1, 1, 1)
  meshes = {
    'one': jax.sharding.Mesh(one_device, parallel.MESH_AXES),
    'eight': parallel.make_mesh(c.mesh),
  }
  results = {}
  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    for name, mesh in meshes.items():
      trainer = loop.Trainer(c, model, params, pool, mesh)
      metrics, _, scored, _ = trainer.run_update(0, PROMPTS, jax.random.key(0))
      results[name] = (trainer, metrics, scored)
  (t1, m1, sc1), (t8, m8, sc8) = results['one'], results['eight']
  np.testing.assert_array_equal(sc1.rewards, sc8.rewards)
  for key in ('train/loss', 'train/grad_norm', 'train/kl'):
    np.testing.assert_allclose(m1[key], m8[key], rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree.leaves(t1.state.params), jax.tree.leaves(t8.state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-5)
  q = t8.state.params['params']['layers']['q']['kernel']
  assert q.sharding.spec == P(None, 'fsdp', 'tensor', None)
  assert (
    t8.ref_params['params']['layers']['q']['kernel'].sharding.spec == q.sharding.spec
  )


def test_shard_put_copy_survives_donation():
  """Regression: ``put(copy=True)`` of a one-device array onto a replicated
  sharding must not reuse its buffer (device_put(may_alias=False) does), or
  donating the copy (the train state) deletes the original (the reference)."""
  c = _config()
  mesh = parallel.make_mesh(c.mesh)
  x = jnp.arange(8.0)
  y = parallel.put(x, parallel.replicated(mesh), copy=True)
  jax.jit(lambda a: a * 2, donate_argnums=0)(y)
  assert y.is_deleted() and not x.is_deleted()
  np.testing.assert_array_equal(np.asarray(x), np.arange(8.0))


def test_shard_checkpoints_restore_onto_another_mesh(tmp_path):
  """Weights and train states written on a (2, 2, 2) mesh load onto (1, 4, 2)
  and onto one device: shardings of the target, values bit-identical."""
  from varrl_jax import checkpoint
  from varrl_jax.weights import load_weights

  c = _config()
  model = build_model(c)
  mesh_a = parallel.make_mesh(c.mesh)
  params, _ = parallel.sharded_init(model, jax.random.key(3), mesh_a)
  path = checkpoint.save_params(str(tmp_path / 'weights'), params, {'command': 'x'})
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 4, 2
  mesh_b = parallel.make_mesh(c.mesh)
  want = parallel.param_shardings(model, mesh_b)
  loaded, source = load_weights(c, model, path, mesh=mesh_b)
  assert source == path
  got = jax.tree.leaves(loaded)
  assert len(got) == len(jax.tree.leaves(params))
  moved = 0
  for a, b, s, s_a in zip(
    got,
    jax.tree.leaves(params),
    jax.tree.leaves(want),
    jax.tree.leaves(parallel.param_shardings(model, mesh_a)),
  ):
    assert a.sharding == s
    moved += a.sharding.shard_shape(a.shape) != s_a.shard_shape(a.shape)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert moved > 0  # the two meshes really split some parameter differently
  one, _ = load_weights(c, model, path)
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(params)):
    assert len(a.sharding.device_set) == 1
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The reference check of a resume (checkpoint.fingerprint) sees the same
  # weights on every mesh: float reductions split per shard would not.
  digest = checkpoint.fingerprint(params)
  assert checkpoint.fingerprint(loaded) == digest
  assert checkpoint.fingerprint(one) == digest

  # The full train state (params + AdamW moments) through TrainCheckpoints.
  opt = optax.adamw(1e-3)
  shard_a = grpo.state_shardings(model, opt, mesh_a)
  state = jax.jit(lambda p: grpo.init_state(p, opt), out_shardings=shard_a)(
    params['transformer']
  )
  states = checkpoint.TrainCheckpoints(str(tmp_path / 'state'), keep=2)
  try:
    states.save(5, state, {'update': 5})
    shard_b = grpo.state_shardings(model, opt, mesh_b)
    target = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shard_b
    )
    restored, record = states.restore_latest(target)
  finally:
    states.close()
  assert record['update'] == 5
  for a, b, s in zip(
    jax.tree.leaves(restored), jax.tree.leaves(state), jax.tree.leaves(shard_b)
  ):
    assert a.sharding == s
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
