import jax.numpy as jnp
import numpy as np
import pytest

from varrl_jax.models.schedule import ScaleSchedule
from varrl_jax.rl import panw

SCHED = ScaleSchedule.create(((1, 2), (2, 4), (4, 8)), (16, 32), 4)  # n_s = 2, 8, 32


def test_scale_weights_definition():
  np.testing.assert_allclose(
    panw.scale_weights(SCHED, 0.6), np.array([2, 8, 32]) ** -0.6, rtol=1e-6
  )


def test_alpha_zero_is_the_per_token_mean():
  w = panw.token_weights(SCHED, 0.0)
  np.testing.assert_allclose(w, 1.0 / 42, rtol=1e-6)
  loss = np.random.default_rng(0).normal(size=(3, 42)).astype(np.float32)
  mask = np.ones_like(loss)
  got = panw.weighted_sum(jnp.asarray(loss), jnp.asarray(w), jnp.asarray(mask))
  np.testing.assert_allclose(got, loss.mean(), rtol=1e-5)


def test_alpha_one_gives_every_scale_equal_weight():
  w = panw.token_weights(SCHED, 1.0)
  per_scale = [w[SCHED.scale_index == s].sum() for s in range(3)]
  np.testing.assert_allclose(per_scale, 1.0 / 3, rtol=1e-6)
  # Then the loss is the mean over scales of each scale's token mean.
  loss = np.random.default_rng(1).normal(size=(2, 42)).astype(np.float32)
  expected = np.mean(
    [loss[:, SCHED.scale_index == s].mean(axis=1) for s in range(3)], axis=0
  ).mean()
  got = panw.weighted_sum(jnp.asarray(loss), jnp.asarray(w), jnp.ones((2, 42)))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize('alpha', [0.0, 0.3, 0.6, 1.2])
def test_general_alpha_matches_the_formula(alpha):
  rng = np.random.default_rng(2)
  loss = rng.normal(size=(2, 42))
  mask = (rng.random((2, 42)) > 0.3).astype(np.float64)
  k = np.array([2, 8, 32], np.float64) ** -alpha
  num = sum(k[s] * (mask * loss)[:, SCHED.scale_index == s].sum(1) for s in range(3))
  expected = (num / (k * [2, 8, 32]).sum()).mean()
  got = panw.weighted_sum(
    jnp.asarray(loss, jnp.float32),
    jnp.asarray(panw.token_weights(SCHED, alpha)),
    jnp.asarray(mask, jnp.float32),
  )
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_stage_weights_are_zero_outside_and_sum_to_one():
  w = panw.token_weights(SCHED, 0.6, np.array([True, True, False]))
  assert (w[SCHED.scale_index == 2] == 0).all()
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match='non-empty'):
    panw.token_weights(SCHED, 0.6, np.zeros(3, bool))
