"""The T5 encoder (Flan-T5, the frozen text encoder of Infinity) in Flax.

Given token ids ``x`` [B, L] and a padding mask ``m`` [B, L] (1 = token):

- ``h_0 = E[x]`` (the shared embedding table, no scaling, no positions);
- each of the ``num_layers`` blocks, pre-norm with residuals:
  ``h += Attn(RMS(h))`` and ``h += FF(RMS(h))``;
- output ``RMS_final(h)``: the ``last_hidden_state`` [B, L, d_model].

``RMS(h) = w ⊙ h / sqrt(mean(h²) + ε)`` (no mean subtraction, no bias),
statistics in float32. Attention has no biases and no ``1/sqrt(d_kv)``
scaling (T5 folds it into the initialisation):
``A_hqk = softmax_k(q_hq · k_hk + b_h(bucket(k − q)) − ∞·[m_k = 0])``, with
one relative-position bias table ``b`` [num_buckets, heads] that the first
block owns and every block reuses. ``FF``: ``wo(act(wi_0 h) ⊙ wi_1 h)``
(``gated-*``) or ``wo(act(wi h))``; ``gated-gelu`` uses the tanh GELU
(transformers' ``gelu_new``), ``gelu`` the exact one.

Keys at padded positions are masked, so the output at a real token does not
depend on how far the batch was padded; the outputs at padded positions are
computed too (as transformers does) but mean nothing.

No dropout (the encoder is frozen and only ever run for inference). Layers
are a plain Python loop (``block_<i>``): the encoder runs once per prompt and
its embeddings are cached (`t5_embedder.PromptEmbedder`). Every parameter
carries logical axis names (`varrl_jax.parallel.LOGICAL_RULES`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_ACTIVATIONS = ('relu', 'gelu', 'gated-relu', 'gated-gelu')


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Static hyper-parameters of a T5 encoder (field names as transformers').

  ``feed_forward_proj`` is one of ``relu`` (T5 1.0), ``gelu``,
  ``gated-relu`` and ``gated-gelu`` (T5 1.1 / Flan-T5). ``dtype`` is the
  compute dtype; norms and softmax always run in float32.
  """

  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 2048
  num_layers: int = 6
  num_heads: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  feed_forward_proj: str = 'gated-gelu'
  layer_norm_epsilon: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    if self.feed_forward_proj not in _ACTIVATIONS:
      raise ValueError(
        f'T5Config.feed_forward_proj: {self.feed_forward_proj!r} is not one of '
        f'{", ".join(_ACTIVATIONS)}'
      )

  @property
  def gated(self) -> bool:
    return self.feed_forward_proj.startswith('gated-')


# google/flan-t5-xl, the text encoder of Infinity-2B/8B (C_t5 = 2048).
FLAN_T5_XL = T5Config(
  vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32
)


def relative_position_buckets(
  q_len: int, k_len: int, num_buckets: int, max_distance: int
) -> np.ndarray:
  """Bidirectional T5 buckets of ``r = k − q``, int32 [q_len, k_len].

  Half of the buckets are for ``r > 0``. Within a half of ``n`` buckets,
  ``|r| < n/2`` gets its own bucket; larger ``|r|`` get
  ``n/2 + floor(log(|r| / (n/2)) / log(max_distance / (n/2)) · n/2)``,
  capped at ``n − 1`` (float32, as transformers computes it, so bucket
  boundaries agree). Static: a numpy table built at trace time.
  """
  rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
  half = num_buckets // 2
  out = (rel > 0).astype(np.int64) * half
  rel = np.abs(rel)
  exact = half // 2
  # |r| < exact takes the other branch; max(., 1) only keeps log finite there.
  log_ratio = np.log(np.maximum(rel, 1).astype(np.float32) / np.float32(exact))
  large = exact + (
    log_ratio / np.float32(math.log(max_distance / exact)) * np.float32(half - exact)
  ).astype(np.int64)
  large = np.minimum(large, half - 1)
  return (out + np.where(rel < exact, rel, large)).astype(np.int32)


def _init(init_fn, *names):
  return nn.with_logical_partitioning(init_fn, names)


class RMSNorm(nn.Module):
  """``w ⊙ x / sqrt(mean(x²) + ε)`` over the last axis, in float32."""

  cfg: T5Config

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    scale = self.param(
      'scale', _init(nn.initializers.ones, 'embed'), (cfg.d_model,), cfg.param_dtype
    )
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + cfg.layer_norm_epsilon)
    return (scale.astype(jnp.float32) * y).astype(cfg.dtype)


def _dense(cfg: T5Config, features, axes_in, axes_out, name: str, axis=-1):
  return nn.DenseGeneral(
    features=features,
    axis=axis,
    use_bias=False,
    dtype=cfg.dtype,
    param_dtype=cfg.param_dtype,
    kernel_init=_init(nn.initializers.lecun_normal(), *axes_in, *axes_out),
    name=name,
  )


class SelfAttention(nn.Module):
  """Unscaled multi-head attention plus the shared position bias [1, H, L, L]."""

  cfg: T5Config

  @nn.compact
  def __call__(self, x_bld, bias_bhqk):
    cfg = self.cfg
    heads = (cfg.num_heads, cfg.d_kv)
    q = _dense(cfg, heads, ('embed',), ('heads', 'kv'), 'q')(x_bld)
    k = _dense(cfg, heads, ('embed',), ('heads', 'kv'), 'k')(x_bld)
    v = _dense(cfg, heads, ('embed',), ('heads', 'kv'), 'v')(x_bld)
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores + bias_bhqk, axis=-1).astype(cfg.dtype)
    o = jnp.einsum('bhqk,bkhd->bqhd', probs, v)
    return _dense(cfg, cfg.d_model, ('heads', 'kv'), ('embed',), 'o', (-2, -1))(o)


class FeedForward(nn.Module):
  """``wo(act(wi_0 x) ⊙ wi_1 x)`` (gated) or ``wo(act(wi x))``."""

  cfg: T5Config

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    if cfg.feed_forward_proj.endswith('relu'):
      act = nn.relu
    else:
      act = lambda h: nn.gelu(h, approximate=cfg.gated)  # noqa: E731
    if cfg.gated:
      h = act(_dense(cfg, cfg.d_ff, ('embed',), ('mlp',), 'wi_0')(x))
      h = h * _dense(cfg, cfg.d_ff, ('embed',), ('mlp',), 'wi_1')(x)
    else:
      h = act(_dense(cfg, cfg.d_ff, ('embed',), ('mlp',), 'wi')(x))
    return _dense(cfg, cfg.d_model, ('mlp',), ('embed',), 'wo')(h)


class T5Block(nn.Module):
  cfg: T5Config

  @nn.compact
  def __call__(self, x, bias_bhqk):
    cfg = self.cfg
    x = x + SelfAttention(cfg, name='attn')(
      RMSNorm(cfg, name='attn_norm')(x), bias_bhqk
    )
    return x + FeedForward(cfg, name='mlp')(RMSNorm(cfg, name='mlp_norm')(x))


class T5Encoder(nn.Module):
  """See the module docstring.

  ``__call__(ids_bl, mask_bl)``: ids int [B, L], mask [B, L] (nonzero = a
  real token; None = no padding) -> float32 ``last_hidden_state`` [B, L, D].
  """

  cfg: T5Config

  @nn.compact
  def __call__(self, ids_bl, mask_bl=None):
    cfg = self.cfg
    embed = self.param(
      'token_embed',
      _init(nn.initializers.normal(1.0), 'text_vocab', 'embed'),
      (cfg.vocab_size, cfg.d_model),
      cfg.param_dtype,
    )
    table = self.param(
      'relative_attention_bias',
      _init(nn.initializers.normal(1.0), 'rel_buckets', 'heads'),
      (cfg.relative_attention_num_buckets, cfg.num_heads),
      cfg.param_dtype,
    )
    length = ids_bl.shape[1]
    buckets = relative_position_buckets(
      length,
      length,
      cfg.relative_attention_num_buckets,
      cfg.relative_attention_max_distance,
    )
    bias = jnp.take(table.astype(jnp.float32), buckets, axis=0)  # [L, L, H]
    bias = bias.transpose(2, 0, 1)[None]  # [1, H, L, L]
    if mask_bl is not None:
      # Additive, like transformers: a query with no valid key at all (only
      # possible at a padded position) still gets a finite softmax.
      neg = jnp.finfo(jnp.float32).min
      bias = bias + jnp.where(mask_bl.astype(bool), 0.0, neg)[:, None, None, :]
    x = jnp.take(embed, ids_bl, axis=0).astype(cfg.dtype)
    for i in range(cfg.num_layers):
      x = T5Block(cfg, name=f'block_{i}')(x, bias)
    return RMSNorm(cfg, name='final_norm')(x).astype(jnp.float32)
