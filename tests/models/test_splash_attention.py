"""The splash-attention path equals the plain one: its mask, and (in Pallas
interpret mode on the CPU) its outputs and gradients, alone and in the model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import toy_config
from varrl_jax.models import attention, text
from varrl_jax.models import transformer as tr_lib
from varrl_jax.models.family import build_model

# text 40 (padding inside), scales of 1, 4, 16 and 100 tokens: 161 positions,
# padded to 256 in the kernel.
SEG = np.concatenate(
  [np.zeros(40, np.int32), np.repeat(np.arange(1, 5), [1, 4, 16, 100])]
)


def _valid(b, tk):
  valid = np.ones((b, tk), bool)
  valid[0, 5:20] = False
  valid[1, 3] = False
  return valid


@pytest.mark.parametrize('first_query', [0, 40, 61])  # full pass, prefill-like, step
def test_splash_mask_equals_block_causal_mask(first_query):
  q_seg = SEG[first_query:]
  last = attention.last_visible_key(q_seg, SEG)
  mask = attention.BlockCausalMask(last, len(SEG))
  valid = _valid(2, len(SEG))
  expected = np.asarray(attention.block_causal_mask(q_seg, SEG, valid))
  # The kernel's mask: the static mask and the segment ids (query 0; key 0
  # where valid, 1 where padding).
  kv_ids = np.where(valid, 0, 1)
  got = mask[:, :][None] & (kv_ids[:, None, :] == 0)
  np.testing.assert_array_equal(got, expected)
  # Block by block, as the kernel's mask preprocessing reads it.
  np.testing.assert_array_equal(mask[8:24, 32:48], mask[:, :][8:24, 32:48])


def test_last_visible_key_needs_sorted_key_segments():
  with pytest.raises(ValueError, match='non-decreasing'):
    attention.last_visible_key(np.array([1]), np.array([0, 2, 1]))


@pytest.mark.parametrize('num_queries', [len(SEG), 130])  # full pass; one step
def test_splash_kernel_equals_plain_attention(num_queries):
  b, h, g, d = 2, 4, 2, 64
  q_seg = SEG[-num_queries:]
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], (b, num_queries, h, d))
  k = jax.random.normal(keys[1], (b, len(SEG), g, d))
  v = jax.random.normal(keys[2], (b, len(SEG), g, d))
  valid = jnp.asarray(_valid(b, len(SEG)))
  splash = functools.partial(attention.splash_attention, interpret=True)

  def loss(fn, q, k, v):
    return (fn(q, k, v, q_seg, SEG, valid) ** 2).sum()

  np.testing.assert_allclose(
    splash(q, k, v, q_seg, SEG, valid),
    attention.plain_attention(q, k, v, q_seg, SEG, valid),
    atol=1e-5,
  )
  grads = jax.grad(functools.partial(loss, splash), argnums=(0, 1, 2))(q, k, v)
  ref = jax.grad(functools.partial(loss, attention.plain_attention), argnums=(0, 1, 2))(
    q, k, v
  )
  for a, r in zip(grads, ref):
    np.testing.assert_allclose(a, r, atol=1e-4)


def test_sequence_segments_match_the_layout():
  c = toy_config()  # text 96, scales of 2, 8, 32 tokens
  cfg = build_model(c).cfg
  seg = tr_lib.sequence_segments(cfg, 0, cfg.seq_len)
  np.testing.assert_array_equal(np.bincount(seg), [96, 2, 8, 32])
  np.testing.assert_array_equal(tr_lib.sequence_segments(cfg, 96 + 2, 8), [2] * 8)


def test_model_with_splash_equals_plain(toy, monkeypatch):
  """Toy model (138 positions: the teacher-forced pass takes the kernel;
  prefill and cache steps have < 128 queries and take the plain path)."""
  config, _, params = toy
  monkeypatch.setattr(
    attention,
    'splash_attention',
    functools.partial(attention.splash_attention, interpret=True),
  )
  ids, mask = text.encode(["a sign that reads 'OPEN'", "'HOT'"], config.model.text_len)
  n = build_model(config).schedule.num_tokens
  inputs = jax.random.normal(jax.random.key(1), (2, n, config.tokenizer.latent_dim))
  out = {}
  for impl in ('plain', 'splash'):
    c = toy_config()
    c.model.attention = impl
    model = build_model(c)
    out[impl] = model.transformer.apply(params['transformer'], ids, mask, inputs)
  np.testing.assert_allclose(out['splash'], out['plain'], atol=1e-4)


def test_unknown_attention_is_an_error():
  c = toy_config()
  c.model.attention = 'flash'
  with pytest.raises(ValueError, match="'plain' or 'splash'"):
    build_model(c)
