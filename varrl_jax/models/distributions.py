"""Token distributions of a model family: log-probs, entropy, drawing.

A family's logits parameterise the distribution of one token; everything the
method does with a token's probability goes through these functions, so a
family with another token distribution (the bitwise tokens of Infinity, whose
log-prob is the sum of its bits' log-probs) only swaps this object.

Every distribution says the shape and dtype of one token (``token_shape``,
``token_dtype``): token arrays are [B, L, *token_shape] everywhere (sampler
state, rollouts, the GRPO batch); log-probs and entropies are always [B, L].

`Categorical`: one softmax over the codebook; logits [..., V], tokens int32.
Top-k / top-p truncation only decides which tokens may be drawn: it is never
part of the log-prob (`varrl_jax.policy`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

# Up to this k the top-k threshold comes from ``lax.top_k`` (XLA:CPU's partial
# sort: ~1 ms for 8 x 100 x 1024 logits at k = 2); above it from a bisection
# (k = 900 of 4096, 4 x 256 rows: ~0.1 s against ~1.1 s for ``lax.top_k``).
SMALL_TOP_K = 16


def _ordered(x):
  """float32 -> uint32 in the same order (for an exact bisection on values)."""
  i = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  return jnp.where(i >> 31 == 1, ~i, i | jnp.uint32(0x80000000))


def _from_ordered(o):
  i = jnp.where(o >> 31 == 1, o & jnp.uint32(0x7FFFFFFF), ~o)
  return jax.lax.bitcast_convert_type(i, jnp.float32)


def _bisect(pred, lo, hi):
  """The smallest uint32 v in (lo, hi] with pred(v), for pred monotone
  (false at lo, true at hi): 32 halvings of the ordered-float range."""

  def body(_, lohi):
    lo, hi = lohi
    mid = lo + (hi - lo) // 2
    ok = pred(mid)
    return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

  return jax.lax.fori_loop(0, 32, body, (lo, hi))[1]


def _sorted_threshold(cand, top_p: float):
  """The keep threshold from the k largest logits ``cand`` (sorted,
  descending): the smallest candidate whose softmax mass strictly above it,
  among the candidates, is < top_p (the last one without top-p)."""
  if top_p >= 1.0:
    return cand[..., -1:]
  probs = jax.nn.softmax(cand, axis=-1)
  keep = jnp.cumsum(probs, axis=-1) - probs < top_p
  return jnp.min(jnp.where(keep, cand, jnp.inf), axis=-1, keepdims=True)


def _small_k(top_k: int, vocab: int) -> bool:
  return 0 < top_k < vocab and top_k <= SMALL_TOP_K


def keep_threshold(logits, top_k: int, top_p: float):
  """float32 [..., 1]: the logits >= it survive top-k then top-p (nucleus).

  top-k: the k-th largest logit t_k. top-p over the survivors, with
  p_i = softmax over them: the smallest survivor c whose mass strictly above,
  sum_{x > c} p_x, is < top_p (the smallest set of highest-probability
  tokens whose mass reaches top_p). Ties with the threshold are kept. For
  k <= SMALL_TOP_K these come from ``lax.top_k`` and a cumsum over the k
  sorted values (as the official VAR sampler's ``cumsum <= 1 - top_p``
  removal); otherwise from exact bisections over the values' bit patterns,
  with no sort of the vocabulary. -inf when nothing is cut. With logits tied
  at the k-th value the two paths differ in top-p: the first normalises over
  exactly k candidates, the bisection over every survivor of the tie.
  """
  v = logits.shape[-1]
  use_k = 0 < top_k < v
  if not use_k and top_p >= 1.0:
    return jnp.full((*logits.shape[:-1], 1), -jnp.inf, logits.dtype)
  if _small_k(top_k, v):
    return _sorted_threshold(jax.lax.top_k(logits, top_k)[0], top_p)
  o = _ordered(logits)
  top = o.max(-1, keepdims=True)
  t = o.min(-1, keepdims=True)
  if use_k:  # t_k = (the smallest m with count(o >= m) < k) - 1
    count_ge = lambda m: (o >= m).sum(-1, keepdims=True, dtype=jnp.int32)  # noqa: E731
    t = _bisect(lambda m: count_ge(m) < top_k, t, top + 1) - 1
  if top_p < 1.0:
    e = jnp.exp(logits - _from_ordered(top)) * (o >= t)
    z = e.sum(-1, keepdims=True)
    t = _bisect(lambda m: (e * (o > m)).sum(-1, keepdims=True) < top_p * z, t - 1, top)
  return _from_ordered(t)


def filter_logits(logits, top_k: int, top_p: float):
  """Sets logits outside the top-k / nucleus (top-p) set to the dtype's min.

  top_k = 0 and top_p = 1 disable each filter; the nucleus is taken among
  the top-k survivors, as the official VAR sampler does (`keep_threshold`).
  Truncation never empties the set.
  """
  if not 0 < top_k < logits.shape[-1] and top_p >= 1.0:
    return logits
  neg = jnp.finfo(logits.dtype).min
  return jnp.where(logits < keep_threshold(logits, top_k, top_p), neg, logits)


def _inverse_cdf(key, e):
  """One draw per row of unnormalised probabilities ``e`` [..., n] (>= 0,
  some > 0): with c = cumsum(e) and u ~ U[0, 1) c_n, the first i with
  c_i > u and e_i > 0.

  XLA's cumsum is not sequential: c may step down, or up where e = 0, by
  rounding. The first *positive* entry with c > u is the draw (never a zero
  one); u rounded up to c_n gives the last positive entry.
  """
  c = jnp.cumsum(e, axis=-1)
  u = jax.random.uniform(key, (*e.shape[:-1], 1), c.dtype) * c[..., -1:]
  hit = (c > u) & (e > 0)
  iota = jax.lax.broadcasted_iota(jnp.int32, e.shape, e.ndim - 1)
  last = jnp.max(jnp.where(e > 0, iota, 0), axis=-1)
  return jnp.where(hit.any(-1), jnp.argmax(hit, axis=-1), last).astype(jnp.int32)


def _draw_kept(key, logits, t):
  """A draw from softmax(logits) restricted to the logits >= t, by an
  inverse CDF over the whole vocabulary (in vocabulary order)."""
  e = jnp.where(logits >= t, jnp.exp(logits - logits.max(-1, keepdims=True)), 0.0)
  return _inverse_cdf(key, e)


def draw(key, logits_bnv, opts):
  """Draws token ids [B, n] from guided logits (temperature, top-k, top-p).

  One uniform per token: drawing Gumbel noise for every logit
  (``jax.random.categorical``) cost XLA:CPU 36 ms of threefry for
  8 x 100 x 1024 logits. With k <= SMALL_TOP_K the draw is an inverse CDF
  over the k candidates of ``lax.top_k`` (in descending order), which never
  touches the vocabulary again: tiny's four scales (8 x 156 x 1024 logits,
  k = 2, top-p 0.9) drew in 4.2 ms instead of 11.3 (medians of 40, 2-core
  host, 2026-12-06; the tie check below included). When some row has
  a logit outside its candidates tied with the threshold (which the
  truncation keeps), the whole batch takes the vocabulary-wide inverse CDF
  instead (`lax.cond`), so both paths draw from the same truncated softmax.
  Larger k and top-p alone take the vocabulary-wide path. Removed tokens are
  never drawn; the kept tokens' probabilities are exact up to float32
  rounding of the cumsum. A key gives different ids on the two paths.
  """
  if opts.temperature == 0:
    return jnp.argmax(logits_bnv, axis=-1).astype(jnp.int32)
  logits = logits_bnv / opts.temperature
  if not _small_k(opts.top_k, logits.shape[-1]):
    return _draw_kept(key, logits, keep_threshold(logits, opts.top_k, opts.top_p))
  cand, ids = jax.lax.top_k(logits, opts.top_k)
  t = _sorted_threshold(cand, opts.top_p)
  kept = cand >= t
  tied = (logits >= t).sum(-1, keepdims=True, dtype=jnp.int32) > kept.sum(
    -1, keepdims=True, dtype=jnp.int32
  )

  def among_candidates(_):
    e = jnp.where(kept, jnp.exp(cand - cand[..., :1]), 0.0)
    j = _inverse_cdf(key, e)
    return jnp.take_along_axis(ids, j[..., None], axis=-1)[..., 0].astype(jnp.int32)

  return jax.lax.cond(
    tied.any(), lambda _: _draw_kept(key, logits, t), among_candidates, None
  )


@dataclasses.dataclass(frozen=True)
class Categorical:
  """One categorical over the codebook per token (logits [..., V])."""

  token_shape: tuple[int, ...] = ()
  token_dtype = jnp.int32

  def token_logprobs(self, logits, tokens):
    """log_softmax(logits)[token], [...]."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]

  def logprobs_and_entropy(self, logits, tokens):
    """(log pi(token), H(pi)) per token, both [...]."""
    # Not fused into what produced the logits: XLA:TPU fused VAR's biased head
    # matmul into this reduction's gradient and refused the train step (AOT
    # v5p-8, configs/var.py: 33 MiB of scoped VMEM over a 16 MiB limit).
    logits = jax.lax.optimization_barrier(logits)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
    return logp, -(jnp.exp(log_probs) * log_probs).sum(-1)

  def draw(self, key, guided_logits, opts):
    return draw(key, guided_logits, opts)
