"""The bitwise token distribution of Infinity (``use_bit_label=1``).

A token is d independent bits; the head gives logits [..., d, 2] (their
[..., 2d] output viewed as d x (class 0, class 1)). Tokens are bits [..., d]
(0/1, any integer dtype). With ``p_j = softmax(l_j)``:

  log pi(token) = sum_j log p_j[b_j],    H(pi) = sum_j H(p_j)

(the bits are independent given the coarser scales, so both sum). Drawing
follows the official sampler (``sample_with_top_k_top_p_also_inplace_
modifying_logits_`` on the logits viewed as [B, l d, 2]), per bit:

- temperature: logits / T (their ``tau``, applied to the guided logits);
- top-k over the 2 classes: k = 1 keeps the larger logit (ties keep both),
  any other k (their default 900) is a no-op;
- top-p: the less likely class is removed iff its probability is <= 1 - p
  (their ``cumsum(ascending softmax) <= 1 - top_p``, the likelier class never
  removed); top_p = 1 is off (ours) as is 0 (theirs);
- then one draw from the softmax of what is left.

Truncation only decides which bits may be drawn: it is never part of the
log-prob (`varrl_jax.policy`). Same methods as
`varrl_jax.models.distributions.Categorical`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def bit_filter(logits_bd2, top_k: int, top_p: float):
  """Sets the classes their top-k / top-p remove to -inf; [..., d, 2]."""
  neg = jnp.finfo(logits_bd2.dtype).min
  out = logits_bd2
  if top_k == 1:
    out = jnp.where(out < out.max(-1, keepdims=True), neg, out)
  if 0.0 < top_p < 1.0:
    probs = jax.nn.softmax(out.astype(jnp.float32), axis=-1)
    p_min = probs.min(-1, keepdims=True)
    is_min = jnp.arange(2) == jnp.argmin(probs, axis=-1)[..., None]
    out = jnp.where(is_min & (p_min <= 1.0 - top_p), neg, out)
  return out


@dataclasses.dataclass(frozen=True)
class Bitwise:
  """d independent bits per token (logits [..., d, 2], tokens [..., d]).

  ``token_shape`` (d,) and ``token_dtype`` int8: token arrays are [B, L, d]
  (0/1) everywhere, as `Categorical`'s are [B, L] int32.
  """

  bits: int
  token_dtype = jnp.int8

  @property
  def token_shape(self) -> tuple[int, ...]:
    return (self.bits,)

  def token_logprobs(self, logits, tokens):
    """sum_j log softmax(l_j)[b_j], [...]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, tokens.astype(jnp.int32)[..., None], axis=-1)
    return picked[..., 0].sum(-1)

  def logprobs_and_entropy(self, logits, tokens):
    """(log pi(token), H(pi)) per token, both [...]."""
    # As Categorical: kept out of the head's fusion (TPU scoped-VMEM limit).
    logits = jax.lax.optimization_barrier(logits)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, tokens.astype(jnp.int32)[..., None], axis=-1)
    entropy = -(jnp.exp(logp) * logp).sum(-1)
    return picked[..., 0].sum(-1), entropy.sum(-1)

  def draw(self, key, guided_logits, opts):
    """Bits int8 [..., d] from guided logits [..., d, 2] (see module doc)."""
    if opts.temperature == 0:
      return jnp.argmax(guided_logits, axis=-1).astype(self.token_dtype)
    logits = bit_filter(guided_logits / opts.temperature, opts.top_k, opts.top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(self.token_dtype)
