"""Plain attention computes each group of query segments against only the keys
it may see (`attention.query_groups`): the same outputs and gradients as
one masked [T, T] block, and as a float64 reference."""

import jax
import jax.numpy as jnp
import numpy as np

from varrl_jax.models import attention

# text 40, scales of 1, 4, 16 and 100 tokens (161 positions).
SEG = np.concatenate(
  [np.zeros(40, np.int32), np.repeat(np.arange(1, 5), [1, 4, 16, 100])]
)
# tiny's layout: text 72, scales of 4, 16, 36 and 100 tokens.
TINY = np.concatenate(
  [np.zeros(72, np.int32), np.repeat(np.arange(1, 5), [4, 16, 36, 100])]
)


def _cost(groups):
  return sum((qe - qs) * ke for qs, qe, ke in groups)


def test_query_groups_cover_the_queries_with_their_visible_keys():
  for seg in (SEG, TINY, SEG[40:]):
    groups = attention.query_groups(seg, seg)
    assert groups[0][0] == 0 and groups[-1][1] == len(seg)
    assert all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
    last = attention.last_visible_key(seg, seg)
    for qs, qe, ke in groups:
      assert last[qs:qe].max() + 1 == ke  # every visible key, and no more
    one = len(seg) * len(seg) + attention.GROUP_OVERHEAD
    assert _cost(groups) + attention.GROUP_OVERHEAD * len(groups) <= one
  # tiny: text + the three small scales see 128 keys, the last scale all 228.
  assert attention.query_groups(TINY, TINY) == [(0, 128, 128), (128, 228, 228)]
  # A query block of one segment against a longer prefix (a cached step).
  assert attention.query_groups(SEG[61:], SEG) == [(0, 100, 161)]
  # Unsorted segments: one block.
  assert attention.query_groups(SEG[::-1], SEG) == [(0, 161, 161)]


def _inputs(tq, tk, seed=0, b=2, h=4, g=2, d=16):
  k = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(k[0], (b, tq, h, d))
  kk = jax.random.normal(k[1], (b, tk, g, d))
  v = jax.random.normal(k[2], (b, tk, g, d))
  valid = np.ones((b, tk), bool)
  valid[0, 5:20] = False
  valid[1, 3] = False
  return q, kk, v, valid


def _reference(q, k, v, q_seg, k_seg, valid):
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  r = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, r, axis=2), np.repeat(v, r, axis=2)
  s = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
  mask = (k_seg[None, :] <= q_seg[:, None])[None, None] & valid[:, None, None, :]
  s = np.where(mask, s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum('bhqk,bkhd->bqhd', p, v)


def test_grouped_attention_equals_one_block_and_the_reference():
  q, k, v, valid = _inputs(len(SEG), len(SEG))
  assert len(attention.query_groups(SEG, SEG)) > 1
  grouped = attention.plain_attention(q, k, v, SEG, SEG, valid)
  one = attention._plain(q, k, v, SEG, SEG, valid, None)
  np.testing.assert_allclose(grouped, one, atol=1e-5)
  np.testing.assert_allclose(grouped, _reference(q, k, v, SEG, SEG, valid), atol=1e-5)
  w = jax.random.normal(jax.random.key(3), grouped.shape)

  def loss(fn, q, k, v):
    return jnp.sum(fn(q, k, v) * w)

  g_grouped = jax.grad(
    lambda *a: loss(
      lambda q, k, v: attention.plain_attention(q, k, v, SEG, SEG, valid), *a
    ),
    argnums=(0, 1, 2),
  )(q, k, v)
  g_one = jax.grad(
    lambda *a: loss(
      lambda q, k, v: attention._plain(q, k, v, SEG, SEG, valid, None), *a
    ),
    argnums=(0, 1, 2),
  )(q, k, v)
  for a, b in zip(g_grouped, g_one):
    assert float(jnp.abs(b).max()) > 1e-3
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_traced_segments_take_one_block():
  q, k, v, valid = _inputs(len(SEG), len(SEG))

  @jax.jit
  def run(q_seg):
    assert attention.query_groups(q_seg, SEG) == [(0, len(SEG), len(SEG))]
    return attention.plain_attention(q, k, v, q_seg, SEG, valid)

  np.testing.assert_allclose(run(SEG), _reference(q, k, v, SEG, SEG, valid), atol=1e-5)
