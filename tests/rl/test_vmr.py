import jax.numpy as jnp
import numpy as np
import pytest

from varrl_jax.models.schedule import ScaleSchedule
from varrl_jax.rl import vmr

NEXTFLOW = ScaleSchedule.create(
  (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 48, 64), (1024, 1024), 16
)


def test_equals_log_mean_exp():
  r = np.array([[0.1, 0.9], [1.5, -0.3], [0.0, 0.0]])
  for eta in (0.5, 1.0, 3.0):
    expected = eta * np.log(np.mean(np.exp(r / eta), axis=-1))
    np.testing.assert_allclose(vmr.value_middle_return(r, eta), expected, rtol=1e-6)


def test_jensen_mean_le_vm_le_max():
  r = np.random.default_rng(0).normal(size=(64, 4))
  for eta in (0.1, 1.0, 10.0):
    v = np.asarray(vmr.value_middle_return(r, eta))
    assert (v >= r.mean(-1) - 1e-6).all() and (v <= r.max(-1) + 1e-6).all()


def test_tends_to_max_as_eta_to_zero_and_mean_as_eta_to_inf():
  r = np.array([[0.2, 0.7, 0.4]])
  np.testing.assert_allclose(vmr.value_middle_return(r, 1e-4), [0.7], atol=1e-3)
  # Large eta -> mean (float32: eta amplifies rounding, so a moderate eta).
  np.testing.assert_allclose(vmr.value_middle_return(r, 100.0), [r.mean()], atol=1e-3)


def test_numerically_stable_for_large_rewards():
  v = vmr.value_middle_return(jnp.array([[1000.0, 1000.0]]), 1e-3)
  np.testing.assert_allclose(v, [1000.0], rtol=1e-6)
  with pytest.raises(ValueError, match='eta must be > 0'):
    vmr.value_middle_return(jnp.ones((1, 2)), 0.0)


def test_split_names_follow_the_paper():
  # m256: prefix up to the 16x16 grid = 12 scales (index 11); m128 8; m512 16.
  assert vmr.split_scale(NEXTFLOW, 'm256') == 11
  assert vmr.split_scale(NEXTFLOW, 'm128') == 7
  assert vmr.split_scale(NEXTFLOW, 'm512') == 15
  assert vmr.split_scale(NEXTFLOW, 'm1024') == 17 == vmr.split_scale(NEXTFLOW, 'full')
  assert vmr.split_scale(NEXTFLOW, 5) == 5 == vmr.split_scale(NEXTFLOW, '5')
  assert vmr.split_scale(NEXTFLOW, -1) == 17 == vmr.split_scale(NEXTFLOW, '-1')
  with pytest.raises(ValueError, match='out of range'):
    vmr.split_scale(NEXTFLOW, 18)
  with pytest.raises(ValueError, match="expected a scale index, 'mNNN'"):
    vmr.split_scale(NEXTFLOW, 'middle')


def test_stage_selectors_partition_the_tokens():
  prefix, suffix = vmr.stage_tokens(NEXTFLOW, 11)
  np.testing.assert_array_equal(prefix + suffix, 1.0)
  assert prefix.sum() == sum(s * s for s in (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16))
  p_full, s_full = vmr.stage_tokens(NEXTFLOW, 17)
  assert p_full.all() and not s_full.any()
