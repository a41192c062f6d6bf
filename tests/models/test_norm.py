"""Our GroupNorm is flax's: the same parameter tree and, up to float32
rounding, the same output and gradients, in both variance modes and dtypes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varrl_jax.models.norm import GroupNorm


@pytest.mark.parametrize('fast', [True, False])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_group_norm_matches_flax(fast, dtype):
  # An offset mean and per-channel scales, so the statistics matter.
  x = jax.random.normal(jax.random.key(0), (3, 5, 7, 24)) * jnp.linspace(0.5, 3, 24)
  x = (x + 2.0).astype(dtype)
  ours = GroupNorm(8, epsilon=1e-6, dtype=dtype, use_fast_variance=fast)
  theirs = nn.GroupNorm(8, epsilon=1e-6, dtype=dtype, use_fast_variance=fast)
  params = theirs.init(jax.random.key(1), x)
  assert jax.tree.structure(ours.init(jax.random.key(1), x)) == jax.tree.structure(
    params
  )
  # Non-trivial scale and bias.
  params = jax.tree.map(
    lambda p: p + jax.random.normal(jax.random.key(2), p.shape), params
  )
  y, want = ours.apply(params, x), theirs.apply(params, x)
  assert y.dtype == want.dtype == dtype
  tol = 1e-5 if dtype == jnp.float32 else 3e-2
  np.testing.assert_allclose(
    np.asarray(y, np.float32), np.asarray(want, np.float32), rtol=tol, atol=tol
  )

  def grads(module):
    return jax.grad(
      lambda p, x: jnp.sum(jnp.sin(module.apply(p, x).astype(jnp.float32))), (0, 1)
    )(params, x.astype(jnp.float32))

  for a, b in zip(
    jax.tree.leaves(grads(ours)), jax.tree.leaves(grads(theirs)), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_group_norm_names_the_bad_split():
  with pytest.raises(ValueError, match='10 channels do not split into 4 groups'):
    GroupNorm(4).init(jax.random.key(0), jnp.zeros((1, 2, 2, 10)))


def test_group_norm_normalises_each_group():
  x = jax.random.normal(jax.random.key(3), (2, 6, 6, 8)) * 5.0 + 3.0
  y = GroupNorm(2).apply(GroupNorm(2).init(jax.random.key(0), x), x)
  groups = np.asarray(y).reshape(2, 36, 2, 4).transpose(0, 2, 1, 3).reshape(2, 2, -1)
  np.testing.assert_allclose(groups.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(groups.var(-1), 1.0, atol=1e-4)
