import functools

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


def _latents_and_partial_sums(tok, p, x, ids):
  """The encoder's f and f_hat_s = sum_{t <= s} h_t(ids_t) for every scale s."""
  f = tok.apply(p, x, method=tok_lib.MultiScaleVQVAE.encode)
  method = tok_lib.MultiScaleVQVAE.fhat_from_scales
  return f, [tok.apply(p, ids[: s + 1], method=method) for s in range(len(ids))]


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
  # vq_loss = (1 + beta) / S sum_s mean((f_hat_s - f)^2), f_hat_s the sum of
  # the first s + 1 scales' residuals (from the ids, not the forward's f_hat).
  f, f_hats = jax.jit(functools.partial(_latents_and_partial_sums, model.tokenizer))(
    params['tokenizer'], x, ids
  )
  beta = model.tokenizer.beta
  want = (1 + beta) * np.mean([np.mean((fh - f) ** 2) for fh in f_hats])
  np.testing.assert_allclose(float(vq_loss), want, rtol=1e-5)


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
  # The flat ids are the per-scale ids of the uint8 picture, scale by scale.
  x_u8 = jnp.asarray(np.asarray(x * 255, np.uint8), jnp.float32) / 255.0
  logits_u8, _, ids_u8 = jax.jit(model.tokenizer.apply)(params['tokenizer'], x_u8)
  np.testing.assert_array_equal(
    flat, np.concatenate([np.asarray(r).reshape(3, -1) for r in ids_u8], axis=1)
  )
  # They decode to the same picture as the training forward's reconstruction
  # (straight-through f_hat) and as the sampler's f_hat accumulation
  # (`fhat_from_tokens`): two other paths; +-1 for rounding at a .5 boundary.
  img = model.decode_tokens(params, flat)
  assert img.shape == (3, *model.schedule.image_size, 3) and img.dtype == jnp.uint8
  img = np.asarray(img, np.int32)
  for want in (
    tok_lib.to_uint8(logits_u8),
    jax.jit(lambda p, t: model.decode_fhat(p, model.fhat_from_tokens(p, t)))(
      params, flat
    ),
  ):
    diff = np.abs(img - np.asarray(want, np.int32))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99, diff.max()


def test_straight_through_gradient_reaches_encoder(toy):
  """d/dp [mean(decode(f_hat_st)) + vq_loss] with f_hat_st = f + sg(f_hat - f):
  the encoder gets the decoder's gradient at f_hat, passed to f unchanged,
  plus the commitment term 2 beta / (S N) sum_s (f - f_hat_s); the codebook
  gets only the codebook term 1 / S sum_s mean((f_hat_s - sg(f))^2)."""
  _, model, params = toy
  tok, p = model.tokenizer, params['tokenizer']
  x = _images(model, seed=3)

  def loss(p):
    logits, vq, ids = tok.apply(p, x)
    return jnp.mean(logits) + vq, ids

  grads, ids = jax.jit(jax.grad(loss, has_aux=True))(p)
  num_scales = len(ids)

  @jax.jit
  def expected(p, ids):
    f, f_hats = _latents_and_partial_sums(tok, p, x, ids)

    def decode(f_hat):
      return jnp.mean(tok.apply(p, f_hat, method=tok_lib.MultiScaleVQVAE.decode))

    def encode(enc):
      q = {'params': {**p['params'], 'encoder': enc}}
      return tok.apply(q, x, method=tok_lib.MultiScaleVQVAE.encode)

    def codebook_term(codebook):
      q = {'params': {**p['params'], 'codebook': codebook}}
      method = tok_lib.MultiScaleVQVAE.fhat_from_scales
      return (
        sum(
          jnp.mean((tok.apply(q, ids[: s + 1], method=method) - f) ** 2)
          for s in range(num_scales)
        )
        / num_scales
      )

    g_f = jax.grad(decode)(f_hats[-1])
    g_f += 2 * tok.beta / (num_scales * f.size) * sum(f - fh for fh in f_hats)
    enc = jax.vjp(encode, p['params']['encoder'])[1](g_f)[0]
    return enc, jax.grad(codebook_term)(p['params']['codebook'])

  enc, codebook = expected(p, ids)
  for a, b in zip(
    jax.tree.leaves(grads['params']['encoder']), jax.tree.leaves(enc), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert float(jnp.abs(codebook).max()) > 0  # the codes in use move
  np.testing.assert_allclose(
    grads['params']['codebook'], codebook, rtol=1e-4, atol=1e-7
  )


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
