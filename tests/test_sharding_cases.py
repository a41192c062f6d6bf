"""Sharding cases; need 8 devices (tests/test_sharding.py runs them in a subprocess)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tests.conftest import toy_config
from varrl_jax import parallel, sampling
from varrl_jax.models import text
from varrl_jax.models.var import build_model
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
  ids, mask = text.encode(["a sign that reads 'OPEN'"] * 4, c.model.text_len)
  s = sampling.Sampler(model, SamplingOptions(cfg_scale=3.0, top_k=8))
  a = s.sample(single, ids, mask, jax.random.key(1))
  sharded = parallel.shard_batch(mesh, {'ids': ids, 'mask': mask}, 4)
  b = s.sample(params, sharded['ids'], sharded['mask'], jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-5)


def test_shard_grpo_update_equals_single_device():
  """Loss, gradient norm and updated params match to 1e-5 (reduction order)."""
  c = _config()
  model = build_model(c)
  mesh = parallel.make_mesh(c.mesh)
  single = model.init(jax.random.key(0))
  opts = SamplingOptions(cfg_scale=3.0, top_k=8)
  ids, mask = text.encode(
    ["a sign that reads 'OPEN'", "a poster: 'SALE'"] * 2, c.model.text_len
  )
  out = sampling.Sampler(model, opts).sample(single, ids, mask, jax.random.key(2))
  inputs = model.teacher_inputs(single, out.tokens)
  batch = {
    'text_ids': jnp.asarray(ids),
    'text_mask': jnp.asarray(mask),
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
