import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import toy_config
from varrl_jax.models import resize
from varrl_jax.models import tokenizer as tok_lib
from varrl_jax.models.family import build_model


def _images(model, n=3, seed=0):
  h, w = model.schedule.image_size
  return jax.random.uniform(jax.random.key(seed), (n, h, w, 3))


def test_decoding_encoded_ids_reproduces_own_reconstruction(toy):
  _, model, params = toy
  x = _images(model)
  logits, vq_loss, ids = jax.jit(model.tokenizer.apply)(params['tokenizer'], x)
  assert [r.shape for r in ids] == [(3, *g) for g in model.schedule.grids]
  assert all(r.dtype == jnp.int32 for r in ids)
  decode = jax.jit(
    lambda p, ids: model.tokenizer.apply(
      p, ids, method=tok_lib.MultiScaleVQVAE.decode_from_scales
    )
  )
  again = decode(params['tokenizer'], ids)
  # Equal up to the rounding of the straight-through sum f + (f_hat - f).
  np.testing.assert_allclose(again, logits, atol=1e-4)
  assert np.isfinite(float(vq_loss)) and float(vq_loss) > 0


def test_encode_to_scales_matches_training_forward_and_flat_ids(toy):
  _, model, params = toy
  x = _images(model, seed=1)
  ids = model.tokenizer.apply(
    params['tokenizer'], x, method=tok_lib.MultiScaleVQVAE.encode_to_scales
  )
  flat = model.encode_images(params, np.asarray(x * 255, np.uint8))
  assert flat.shape == (3, model.schedule.num_tokens)
  _, _, ids_fwd = model.tokenizer.apply(params['tokenizer'], x)
  for a, b in zip(ids, ids_fwd):
    np.testing.assert_array_equal(a, b)
  # Flat ids decode to the same picture as the per-scale ids.
  img = model.decode_tokens(params, flat)
  assert img.shape == (3, *model.schedule.image_size, 3) and img.dtype == jnp.uint8


def test_straight_through_gradient_reaches_encoder(toy):
  _, model, params = toy
  x = _images(model, seed=3)

  def loss(p):
    logits, vq, _ = model.tokenizer.apply(p, x)
    return jnp.mean(logits) + vq

  grads = jax.jit(jax.grad(loss))(params['tokenizer'])
  enc = jax.tree.leaves(grads['params']['encoder'])
  assert any(float(jnp.abs(g).max()) > 0 for g in enc)
  assert float(jnp.abs(grads['params']['codebook']).max()) > 0


def test_wrong_image_size_is_a_clear_error(toy):
  _, model, params = toy
  with pytest.raises(
    ValueError, match=r'expected \[B, 16, 32, 3\] \(config.image_size=\(16, 32\)\)'
  ):
    model.encode_images(params, np.zeros((1, 32, 32, 3), np.uint8))


def test_channels_must_match_downsample():
  c = toy_config()
  c.tokenizer.channels = (8, 16)
  with pytest.raises(ValueError, match='config.tokenizer.channels has 2 levels'):
    build_model(c)


def test_resize_matrices():
  a = resize.area_matrix(8, 4)
  np.testing.assert_allclose(a[0], [0.5, 0.5, 0, 0, 0, 0, 0, 0])
  np.testing.assert_allclose(resize.area_matrix(3, 2).sum(1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(resize.area_matrix(3, 2)[0], [2 / 3, 1 / 3, 0], rtol=1e-6)
  b = resize.bicubic_matrix(2, 8)
  np.testing.assert_allclose(b.sum(1), 1.0, rtol=1e-6)
  # A constant field stays constant through both directions.
  x = jnp.ones((1, 4, 8, 2))
  np.testing.assert_allclose(resize.resize(x, (2, 3), 'area'), 1.0, rtol=1e-6)
  np.testing.assert_allclose(resize.resize(x, (8, 16), 'bicubic'), 1.0, rtol=1e-6)
