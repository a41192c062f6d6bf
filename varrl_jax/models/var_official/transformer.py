"""The VAR transformer (FoundationVision/VAR ``models/var.py``) in Flax.

Sequence ``[scale 0 | scale 1 | ... | scale S-1]`` (no text), block-causal
across scales. With ``c = class_emb[y]`` (row ``num_classes`` is the null
class of classifier-free guidance):

- scale 0 input: ``c + pos_start``; scale s > 0: ``word_embed(x_s)`` with
  ``x_s`` the tokenizer's f_hat area-resized to the grid of scale s; every
  token then adds ``lvl_embed[s] + pos_1LC[i]``.
- each block (AdaLN): ``(g1, g2, s1, s2, b1, b2) = ada_lin(silu(c))`` (or,
  with ``shared_aln``, ``ada_gss + shared_ada_lin(silu(c))``), then
  ``x += g1 * attn(LN(x) (1 + s1) + b1)`` and
  ``x += g2 * mlp(LN(x) (1 + s2) + b2)``; LN has no affine (eps 1e-6), the
  MLP is fc1 -> GELU(tanh) -> fc2.
- attention: ``qkv = x W + [q_bias, 0, v_bias]``; q and k L2-normalised,
  q times ``exp(min(scale_mul_h, ln 100))`` per head, softmax scale 1.
- head: ``head(LN(x) (1 + s) + b)`` with ``(s, b) = head_nm.ada_lin(silu(c))``.

Entry points (``module.apply(..., method=...)``): `__call__` (teacher-forced
logits of the first ``num_scales`` scales), `condition` (the class vector c)
and `step` (one scale against a KV cache). Layers are one scanned block
(parameters stacked on a 'layers' axis); every parameter carries logical axis
names (`varrl_jax.parallel.LOGICAL_RULES`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from varrl_jax import parallel
from varrl_jax.models import attention as attn_lib
from varrl_jax.models import rows as rows_lib
from varrl_jax.models.schedule import ScaleSchedule
from varrl_jax.models.transformer import scanned_blocks

Cache = dict[str, jnp.ndarray]  # {'k', 'v'}: [layers, B, H, L, D] (heads-major)

MAX_SCALE_MUL = math.log(100.0)


@dataclasses.dataclass(frozen=True)
class VarConfig:
  """Static hyper-parameters of the official VAR transformer (hashable)."""

  schedule: ScaleSchedule
  vocab_size: int
  latent_dim: int
  depth: int
  embed_dim: int
  num_heads: int
  mlp_ratio: float = 4.0
  num_classes: int = 1000
  shared_aln: bool = False
  norm_eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = 'none'
  attention: str = 'plain'
  scan_unroll: int = 1
  # Dense layers on [B T, d] rows (`models/rows.py`).
  flat_rows: bool = False

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def mlp_dim(self) -> int:
    return round(self.embed_dim * self.mlp_ratio)

  @property
  def seq_len(self) -> int:
    return self.schedule.num_tokens

  @property
  def null_class(self) -> int:
    return self.num_classes


def _init(init_fn, *names):
  return nn.with_logical_partitioning(init_fn, names)


def _constrain(x, *names):
  return nn.with_logical_constraint(x, names, rules=parallel.LOGICAL_RULES)


def layer_norm(x, eps: float):
  """LayerNorm without affine parameters, computed in float32."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def l2_normalize(x, eps: float = 1e-12):
  """x / max(||x||, eps) over the last axis (torch's F.normalize)."""
  x32 = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True))
  return (x32 / jnp.maximum(norm, eps)).astype(x.dtype)


def _dense(features, axes_in, axes_out, cfg: VarConfig, name: str, bias: bool, axis=-1):
  return nn.DenseGeneral(
    features=features,
    axis=axis,
    use_bias=bias,
    dtype=cfg.dtype,
    param_dtype=cfg.param_dtype,
    kernel_init=_init(nn.initializers.lecun_normal(), *axes_in, *axes_out),
    bias_init=_init(nn.initializers.zeros, *axes_out),
    dot_general=rows_lib.rows_dot_general if cfg.flat_rows else None,
    name=name,
  )


class AdaLin(nn.Module):
  """silu(c) W + b, reshaped to [B, n, C]: the AdaLN modulation vectors."""

  cfg: VarConfig
  n: int

  @nn.compact
  def __call__(self, cond_bd):
    cfg = self.cfg
    dense = _dense(
      (self.n, cfg.embed_dim), ('cond_embed',), ('adaln', 'embed'), cfg, 'lin', True
    )
    return dense(nn.silu(cond_bd.astype(cfg.dtype)))


class VarBlock(nn.Module):
  """One AdaLN self-attention block; the unit scanned over layers.

  ``ada``: [B, D] class vectors (per-block ``ada_lin``) or, with
  ``shared_aln``, the shared [B, 6, C] projection (plus this block's
  ``ada_gss``). ``cache_offset`` None: no cache (teacher-forced pass);
  otherwise keys/values are written at [offset, offset + T).
  """

  cfg: VarConfig

  @nn.compact
  def __call__(self, x, layer_cache, ada, cache_offset=None):
    cfg = self.cfg
    if cfg.shared_aln:
      gss = self.param(
        'ada_gss',
        _init(nn.initializers.normal(cfg.embed_dim**-0.5), 'adaln', 'embed'),
        (6, cfg.embed_dim),
        cfg.param_dtype,
      )
      mod = ada + gss.astype(ada.dtype)[None]
    else:
      mod = AdaLin(cfg, 6, name='ada_lin')(ada)
    g1, g2, s1, s2, b1, b2 = (mod[:, i][:, None].astype(cfg.dtype) for i in range(6))

    start = 0 if cache_offset is None else cache_offset
    q_seg = cfg.schedule.scale_index[start : start + x.shape[1]]
    k_seg = cfg.schedule.scale_index[: start + x.shape[1]]
    flat = cfg.flat_rows  # dense layers on [B T, d] rows (`models/rows.py`)
    h = layer_norm(x, cfg.norm_eps) * (1 + s1) + b1
    heads = (cfg.num_heads, cfg.head_dim)
    qkv = _dense((3, *heads), ('embed',), ('qkv', 'heads', 'kv'), cfg, 'qkv', False)
    qkv = rows_lib.on_rows(qkv, h, flat)
    q_bias = self.param('q_bias', _init(nn.initializers.zeros, 'heads', 'kv'), heads)
    v_bias = self.param('v_bias', _init(nn.initializers.zeros, 'heads', 'kv'), heads)
    scale_mul = self.param(
      'scale_mul',
      _init(nn.initializers.constant(math.log(4.0)), 'heads'),
      (cfg.num_heads,),
    )
    q = l2_normalize(qkv[:, :, 0] + q_bias.astype(cfg.dtype))
    q = q * jnp.exp(jnp.minimum(scale_mul, MAX_SCALE_MUL))[:, None].astype(cfg.dtype)
    k = l2_normalize(qkv[:, :, 1])
    v = qkv[:, :, 2] + v_bias.astype(cfg.dtype)
    if cache_offset is None:
      k_valid = np.ones((x.shape[0], k.shape[1]), bool)  # no padding in VAR
      o = attn_lib.attention(cfg.attention, q, k, v, q_seg, k_seg, k_valid, scale=1.0)
    else:
      # The cache is heads-major, [B, H, L, D]; a step's queries (one whole
      # scale) see every key written so far.
      end = cache_offset + x.shape[1]
      put = lambda c, new: jax.lax.dynamic_update_slice(  # noqa: E731
        c, new.transpose(0, 2, 1, 3).astype(c.dtype), (0, 0, start, 0)
      )
      ck, cv = put(layer_cache['k'], k), put(layer_cache['v'], v)
      layer_cache = {'k': ck, 'v': cv}
      k, v = ck[:, :, :end].astype(cfg.dtype), cv[:, :, :end].astype(cfg.dtype)
      if cfg.attention == 'plain':
        o = attn_lib.cached_attention(q, k, v, 1.0)
      else:
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        k_valid = np.ones((x.shape[0], end), bool)
        o = attn_lib.attention(cfg.attention, q, k, v, q_seg, k_seg, k_valid, scale=1.0)
    proj = _dense(
      cfg.embed_dim, ('heads', 'kv'), ('embed',), cfg, 'proj', True, (-2, -1)
    )
    x = _constrain(x + g1 * rows_lib.on_rows(proj, o, flat), 'batch', 'length', 'embed')

    def ffn(h):
      h = _dense(cfg.mlp_dim, ('embed',), ('mlp',), cfg, 'fc1', True)(h)
      return _dense(cfg.embed_dim, ('mlp',), ('embed',), cfg, 'fc2', True)(
        nn.gelu(h, approximate=True)
      )

    h = layer_norm(x, cfg.norm_eps) * (1 + s2) + b2
    x = _constrain(x + g2 * rows_lib.on_rows(ffn, h, flat), 'batch', 'length', 'embed')
    return x, layer_cache


class VarTransformer(nn.Module):
  """See the module docstring. Logits are float32 [B, n, V]."""

  cfg: VarConfig

  def setup(self):
    cfg = self.cfg
    std = math.sqrt(1 / cfg.embed_dim / 3)
    emb = nn.initializers.truncated_normal(std)
    c = cfg.embed_dim
    sched = cfg.schedule

    def param(name, axes, shape):
      return self.param(name, _init(emb, *axes), shape, cfg.param_dtype)

    self.class_emb = param('class_emb', ('classes', 'embed'), (cfg.num_classes + 1, c))
    self.pos_start = param(
      'pos_start', ('start_length', 'embed'), (int(sched.counts[0]), c)
    )
    self.pos_1LC = param('pos_1LC', ('image_length', 'embed'), (sched.num_tokens, c))
    self.lvl_embed = param('lvl_embed', ('scales', 'embed'), (sched.num_scales, c))
    self.word_embed = _dense(c, ('latent',), ('embed',), cfg, 'word_embed', True)
    if cfg.shared_aln:
      self.shared_ada_lin = AdaLin(cfg, 6, name='shared_ada_lin')
    self.blocks = scanned_blocks(VarBlock, cfg, cfg.depth, 'blocks')
    self.head_nm = AdaLin(cfg, 2, name='head_nm')
    self.head = _dense(cfg.vocab_size, ('embed',), ('vocab',), cfg, 'head', True)

  # -- pieces -----------------------------------------------------------------

  def condition(self, labels_b):
    """The class vectors c = class_emb[y], [B, D] (y = num_classes: null)."""
    return jnp.take(self.class_emb, labels_b, axis=0)

  def _ada(self, cond_bd):
    return self.shared_ada_lin(cond_bd) if self.cfg.shared_aln else cond_bd

  def _embed(self, cond_bd, inputs_blc, first: int, last: int):
    """Token inputs of scales [first, last): [B, n, Cvae] -> [B, n, C]."""
    cfg = self.cfg
    sched = cfg.schedule
    start, end = int(sched.offsets[first]), int(sched.offsets[last])
    x = self.word_embed(inputs_blc.astype(cfg.dtype))
    if first == 0:
      sos = cond_bd[:, None].astype(x.dtype) + self.pos_start.astype(x.dtype)[None]
      x = jnp.concatenate([sos, x[:, sos.shape[1] :]], axis=1)
    lvl = jnp.take(self.lvl_embed, sched.scale_index[start:end], axis=0)
    return (x + (lvl + self.pos_1LC[start:end])[None]).astype(cfg.dtype)

  def _logits(self, x, cond_bd):
    mod = self.head_nm(cond_bd)
    scale, shift = mod[:, 0][:, None], mod[:, 1][:, None]
    h = layer_norm(x.astype(jnp.float32), self.cfg.norm_eps) * (1 + scale) + shift
    h = h.astype(self.cfg.dtype)
    logits = rows_lib.on_rows(self.head, h, self.cfg.flat_rows)
    logits = _constrain(logits, 'batch', 'length', 'vocab')
    return logits.astype(jnp.float32)

  # -- entry points -----------------------------------------------------------

  def __call__(self, labels_b, inputs_blc, num_scales: int | None = None):
    """Teacher-forced logits [B, L_p, V] of the first ``num_scales`` scales.

    ``inputs_blc`` [B, L_p, Cvae]: the next-scale inputs of those scales (the
    slots of scale 0 are ignored: its input is the class vector).
    """
    num_scales = self.cfg.schedule.num_scales if num_scales is None else num_scales
    cond = self.condition(labels_b)
    x = _constrain(
      self._embed(cond, inputs_blc, 0, num_scales), 'batch', 'length', 'embed'
    )
    x, _ = self.blocks(x, None, self._ada(cond), None)
    return self._logits(x, cond)

  def step(self, inputs_bnc, s: int, cond_bd, cache: Cache):
    """Logits [B, n_s, V] of scale s from its inputs; appends to the cache."""
    x = self._embed(cond_bd, inputs_bnc, s, s + 1)
    offset = int(self.cfg.schedule.offsets[s])
    x, cache = self.blocks(x, cache, self._ada(cond_bd), offset)
    return self._logits(x, cond_bd), cache


def init_cache(cfg: VarConfig, batch: int, dtype=None) -> Cache:
  """An empty KV cache for ``batch`` sequences: [layers, B, H, L, D]."""
  shape = (cfg.depth, batch, cfg.num_heads, cfg.seq_len, cfg.head_dim)
  dtype = cfg.dtype if dtype is None else dtype
  return {'k': jnp.zeros(shape, dtype), 'v': jnp.zeros(shape, dtype)}
