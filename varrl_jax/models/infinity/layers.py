"""Layers of the Infinity transformer shared by its text side and its blocks.

`InfinityConfig` (static hyper-parameters and presets), dense/normalisation
helpers, the text-side modules (`TextNorm`, `TextPool`, `TextProj`) and the
cross-attention (`CrossAttention`). Their counterparts in FoundationVision/
Infinity ``infinity/models``: ``FastRMSNorm``, ``TextAttentivePool``
(``CrossAttention(for_attn_pool=True)``), ``text_proj_for_ca`` and
``CrossAttention``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from varrl_jax import parallel
from varrl_jax.models import rows as rows_lib
from varrl_jax.models.schedule import ScaleSchedule

NUM_LEVELS = 15  # rows of their lvl_embed table


@dataclasses.dataclass(frozen=True)
class InfinityConfig:
  """Static hyper-parameters of the official Infinity transformer (hashable).

  ``bits`` is d, the bits per transformer token (their ``codebook_dim``: the
  VAE's ``embed_dim``, times 4 with ``apply_spatial_patchify``); the head
  gives d x 2 logits per token. ``rope_grid`` is the last grid of the '1M'
  schedule of the aspect ratio (`rope.py`). ``text_maxlen`` is the row count
  of ``cfg_uncond`` (their ``text_maxlen``, 512 in ``run_infinity.py``).
  """

  schedule: ScaleSchedule
  rope_grid: tuple[int, int]
  bits: int
  depth: int
  embed_dim: int
  num_heads: int
  mlp_ratio: float = 4.0
  text_channels: int = 2048
  text_maxlen: int = 512
  norm_eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = 'none'
  attention: str = 'plain'
  scan_unroll: int = 1
  # Dense layers on [B T, C] rows (`models/rows.py`).
  flat_rows: bool = False

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def mlp_dim(self) -> int:
    # Their FFN: round(C * mlp_ratio / 256) * 256.
    return round(self.embed_dim * self.mlp_ratio / 256) * 256

  @property
  def pool_heads(self) -> int:
    # TextAttentivePool: head width 64 above C = 4096, else 128, over Ct5.
    return self.text_channels // (64 if self.embed_dim > 4096 else 128)

  @property
  def pool_head_dim(self) -> int:
    return self.embed_dim // self.pool_heads

  @property
  def seq_len(self) -> int:
    return self.schedule.num_tokens

  def __post_init__(self):
    if self.embed_dim % self.num_heads or self.head_dim % 4:
      raise ValueError(
        f'embed_dim={self.embed_dim}, num_heads={self.num_heads}: the head width '
        'must be an integer multiple of 4 (2-D RoPE)'
      )
    if self.pool_heads < 1 or self.embed_dim % self.pool_heads:
      raise ValueError(
        f'text_channels={self.text_channels}: the text pool needs >= 1 head of '
        f'width 128 (64 above embed_dim 4096) dividing embed_dim={self.embed_dim}'
      )
    if self.mlp_dim < 1:
      raise ValueError(f'embed_dim={self.embed_dim}: their MLP width rounds to 0')
    if self.schedule.num_scales > NUM_LEVELS:
      raise ValueError(f'schedule: at most {NUM_LEVELS} scales (lvl_embed rows)')


# tools/run_infinity.py model_type presets (their flags: shared_aln=True,
# use_bit_label=1, rope2d_each_sa_layer=1, rope2d_normalized_by_hw=2,
# add_lvl_embeding_only_first_block=1, text_channels=2048, text_maxlen=512).
PRESETS = {
  # infinity_2b_reg.pth with the d32 BSQ VAE (vae_type=32).
  'infinity_2b': dict(depth=32, embed_dim=2048, num_heads=16, bits=32),
  # infinity_8b_weights with the 14-bit stride-8 VAE + spatial patchify: 4 x 14.
  'infinity_8b': dict(depth=40, embed_dim=3584, num_heads=28, bits=56),
}


def preset(
  name: str, schedule: ScaleSchedule, rope_grid: tuple[int, int], **overrides
) -> InfinityConfig:
  """The config of a named official model (`PRESETS`) on ``schedule``."""
  if name not in PRESETS:
    raise ValueError(f'model {name!r}: expected one of {sorted(PRESETS)}')
  kw = dict(PRESETS[name], **overrides)
  return InfinityConfig(schedule=schedule, rope_grid=tuple(rope_grid), **kw)


def init(init_fn, *names):
  return nn.with_logical_partitioning(init_fn, names)


def constrain(x, *names):
  return nn.with_logical_constraint(x, names, rules=parallel.LOGICAL_RULES)


def dense(features, axes_in, axes_out, cfg, name=None, bias=True, axis=-1):
  """A DenseGeneral whose kernel/bias carry logical axis names (``name``
  None inside ``setup``, where the attribute names it)."""
  return nn.DenseGeneral(
    features=features,
    axis=axis,
    use_bias=bias,
    dtype=cfg.dtype,
    param_dtype=cfg.param_dtype,
    kernel_init=init(nn.initializers.lecun_normal(), *axes_in, *axes_out),
    bias_init=init(nn.initializers.zeros, *axes_out),
    dot_general=rows_lib.rows_dot_general if cfg.flat_rows else None,
    name=name,
  )


def layer_norm(x, eps: float):
  """LayerNorm without affine parameters, in float32."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  return (x32 - mean) * jax.lax.rsqrt(var + eps)


def l2_normalize(x, eps: float = 1e-12):
  """x / max(||x||, eps) over the last axis (torch's F.normalize)."""
  x32 = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True))
  return (x32 / jnp.maximum(norm, eps)).astype(x.dtype)


def masked_attention(q_bqhd, k_bkhd, v_bkhd, valid_bk, scale: float):
  """softmax(scale q k^T, keys with valid False excluded) v; [B, Tq, H, D].

  Scores in float32. A row without any valid key gets the mean of all values
  (finite; never used by the model, whose prompts have >= 1 token).
  """
  s = jnp.einsum('bqhd,bkhd->bhqk', q_bqhd, k_bkhd, preferred_element_type=jnp.float32)
  s = jnp.where(valid_bk[:, None, None, :], s * scale, jnp.finfo(jnp.float32).min)
  p = jax.nn.softmax(s, axis=-1).astype(v_bkhd.dtype)
  return jnp.einsum('bhqk,bkhd->bqhd', p, v_bkhd)


class TextNorm(nn.Module):
  """RMSNorm with a learned scale over the text channels (their text_norm)."""

  cfg: InfinityConfig

  @nn.compact
  def __call__(self, text_btc):
    cfg = self.cfg
    scale = self.param(
      'scale',
      init(nn.initializers.ones, 'text_embed'),
      (text_btc.shape[-1],),
      cfg.param_dtype,
    )
    x = text_btc.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + cfg.norm_eps)
    return x * scale.astype(jnp.float32)


class TextPool(nn.Module):
  """Attentive pooling of the normed text: one learned query per head.

  ``pooled = proj(concat_h softmax(q_h k_h^T / sqrt(d_p)) v_h)`` with
  ``[k, v] = text W_kv + [0, b_v]`` over the valid tokens; [B, C].
  """

  cfg: InfinityConfig

  @nn.compact
  def __call__(self, text_btc, mask_bt):
    cfg = self.cfg
    heads = (cfg.pool_heads, cfg.pool_head_dim)
    std = math.sqrt(1 / cfg.embed_dim / 3)
    query = self.param(
      'query',
      init(nn.initializers.truncated_normal(std), 'heads', 'kv'),
      heads,
      cfg.param_dtype,
    )
    kv = dense((2, *heads), ('text_embed',), ('qkv', 'heads', 'kv'), cfg, 'kv', False)
    kv = kv(text_btc.astype(cfg.dtype))
    v_bias = self.param('v_bias', init(nn.initializers.zeros, 'heads', 'kv'), heads)
    k, v = kv[:, :, 0], kv[:, :, 1] + v_bias.astype(cfg.dtype)
    q = jnp.broadcast_to(query.astype(cfg.dtype), (k.shape[0], 1, *heads))
    o = masked_attention(q, k, v, mask_bt, cfg.pool_head_dim**-0.5)[:, 0]
    proj = dense(cfg.embed_dim, ('heads', 'kv'), ('embed',), cfg, 'proj', axis=(-2, -1))
    return proj(o)


class TextProj(nn.Module):
  """The cross-attention memory: fc2(GELU_tanh(fc1(normed text))), [B, T, C]."""

  cfg: InfinityConfig

  @nn.compact
  def __call__(self, text_btc):
    cfg = self.cfg
    # The hidden width is C too; naming it 'mlp' keeps fc2's two axes apart
    # (a kernel cannot shard one mesh axis twice).
    h = dense(cfg.embed_dim, ('text_embed',), ('mlp',), cfg, 'fc1')(
      text_btc.astype(cfg.dtype)
    )
    h = nn.gelu(h, approximate=True)
    return dense(cfg.embed_dim, ('mlp',), ('embed',), cfg, 'fc2')(h)


class CrossAttention(nn.Module):
  """Image tokens attend to the projected text (valid tokens only).

  ``q = LN_affine(x) W_q + b_q``; ``[k, v] = text W_kv + [0, b_v]``; scale
  1 / sqrt(head_dim); ``proj`` back to C. `kv` alone computes the memory's
  keys and values (cached once per prompt by the KV-cached path).
  """

  cfg: InfinityConfig

  def setup(self):
    cfg = self.cfg
    heads = (cfg.num_heads, cfg.head_dim)
    self.norm = nn.LayerNorm(
      epsilon=cfg.norm_eps,
      dtype=jnp.float32,
      param_dtype=cfg.param_dtype,
      use_fast_variance=False,
      scale_init=init(nn.initializers.ones, 'embed'),
      bias_init=init(nn.initializers.zeros, 'embed'),
    )
    self.q = dense(heads, ('embed',), ('heads', 'kv'), cfg)
    self.kv_proj = dense(
      (2, *heads), ('embed',), ('qkv', 'heads', 'kv'), cfg, bias=False
    )
    self.v_bias = self.param(
      'v_bias', init(nn.initializers.zeros, 'heads', 'kv'), heads
    )
    self.proj = dense(cfg.embed_dim, ('heads', 'kv'), ('embed',), cfg, axis=(-2, -1))

  def kv(self, memory_btc):
    """(k, v), each [B, T, H, D]."""
    kv = self.kv_proj(memory_btc.astype(self.cfg.dtype))
    return kv[:, :, 0], kv[:, :, 1] + self.v_bias.astype(self.cfg.dtype)

  def __call__(self, x_blc, k_bthd, v_bthd, mask_bt):
    cfg = self.cfg
    q = rows_lib.on_rows(
      lambda x: self.q(self.norm(x.astype(jnp.float32)).astype(cfg.dtype)),
      x_blc,
      cfg.flat_rows,
    )
    o = masked_attention(q, k_bthd, v_bthd, mask_bt, cfg.head_dim**-0.5)
    return rows_lib.on_rows(self.proj, o, cfg.flat_rows)
