"""Decoder-only next-scale transformer: text prefix, then all image scales.

Sequence ``[text (T_t, padded) | scale 0 | ... | scale S-1]`` with block-causal
attention (`attention.py`). The input of scale 0 is a learned start vector;
the input of scale s > 0 is the tokenizer's f_hat accumulated over scales < s,
area-resized to (h_s, w_s) and projected from the latent width to d_model.
The hidden state at a token of scale s predicts that token's codebook id, so
the logits of scale s depend on the tokens of scales < s only.

Positions: learned text positions, learned per-token image positions (one per
cell of every grid, VAR style) and a learned scale embedding; optionally
(``model.quote_slots``) learned positions of each byte inside the prompt's
quoted text, counted from both ends of the quote and from its centre. Blocks:
pre-RMSNorm, grouped-query attention, SwiGLU MLP, scanned over layers (one
compiled block whatever the depth) with optional rematerialisation.

Three entry points share the weights (called with ``module.apply(...,
method=...)``): `__call__` (teacher-forced pass over the first ``num_scales``
scales), `prefill` (text into a KV cache) and `step` (one scale against the
cache). Every parameter carries logical axis names (DESIGN.md section 4).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from varrl_jax import parallel
from varrl_jax.models import attention as attn_lib
from varrl_jax.models import rows as rows_lib
from varrl_jax.models import text as text_lib
from varrl_jax.models.family import check_modes
from varrl_jax.models.schedule import ScaleSchedule

Cache = dict[str, jnp.ndarray]  # {'k', 'v'}: see `init_cache`


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Static hyper-parameters (hashable: usable as a jit static argument)."""

  schedule: ScaleSchedule
  vocab_size: int
  latent_dim: int
  text_len: int
  num_layers: int
  d_model: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  text_vocab_size: int = text_lib.VOCAB_SIZE
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = 'none'  # 'none' | 'full' | 'dots'
  attention: str = 'plain'
  norm_eps: float = 1e-6
  scan_unroll: int = 1
  quote_slots: int = 0
  # Dense layers on [B T, d] rows instead of [B, T, d] (`models/rows.py`).
  flat_rows: bool = False

  @property
  def seq_len(self) -> int:
    return self.text_len + self.schedule.num_tokens


def _constrain(x, *names):
  """Activation sharding by logical names; a no-op outside a mesh context
  (`parallel.mesh_context`). The rules are passed here rather than set with
  ``nn.logical_axis_rules``: under that context flax would also constrain
  DenseGeneral's flattened kernel at init with the unflattened names, which
  fails."""
  return nn.with_logical_constraint(x, names, rules=parallel.LOGICAL_RULES)


def _init(init_fn, *names):
  return nn.with_logical_partitioning(init_fn, names)


class RMSNorm(nn.Module):
  eps: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x):
    scale = self.param(
      'scale', _init(nn.initializers.ones, 'embed'), (x.shape[-1],), self.param_dtype
    )
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (x32 * scale.astype(jnp.float32)).astype(self.dtype)


def _dense(features, axes_in, axes_out, cfg: TransformerConfig, name: str, axis=-1):
  return nn.DenseGeneral(
    features=features,
    axis=axis,
    use_bias=False,
    dtype=cfg.dtype,
    param_dtype=cfg.param_dtype,
    kernel_init=_init(nn.initializers.lecun_normal(), *axes_in, *axes_out),
    dot_general=rows_lib.rows_dot_general if cfg.flat_rows else None,
    name=name,
  )


class Block(nn.Module):
  """Pre-norm GQA attention + SwiGLU; the unit scanned over layers.

  ``cache_offset`` (a static int) None: no cache (teacher-forced pass).
  Otherwise the block writes its keys/values at [offset, offset + T) of the
  layer's cache and attends over the cache prefix [0, offset + T). The
  segment ids of queries and keys follow from the offset and T
  (`sequence_segments`) and are static, as the splash kernel needs.
  """

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x, layer_cache, k_valid, cache_offset=None):
    cfg = self.cfg
    start = 0 if cache_offset is None else cache_offset
    q_seg = sequence_segments(cfg, start, x.shape[1])
    k_seg = sequence_segments(cfg, 0, start + x.shape[1])
    flat = cfg.flat_rows  # dense layers on [B T, d] rows (`models/rows.py`)

    def qkv(h):
      h = RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name='attn_norm')(h)
      kv = ('kv_heads', 'kv')
      return (
        _dense((cfg.num_heads, cfg.head_dim), ('embed',), ('heads', 'kv'), cfg, 'q')(h),
        _dense((cfg.num_kv_heads, cfg.head_dim), ('embed',), kv, cfg, 'k')(h),
        _dense((cfg.num_kv_heads, cfg.head_dim), ('embed',), kv, cfg, 'v')(h),
      )

    def mlp(h):
      h = RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name='mlp_norm')(h)
      gate = _dense(cfg.mlp_dim, ('embed',), ('mlp',), cfg, 'wi_gate')(h)
      up = _dense(cfg.mlp_dim, ('embed',), ('mlp',), cfg, 'wi_up')(h)
      return _dense(cfg.d_model, ('mlp',), ('embed',), cfg, 'wo')(nn.silu(gate) * up)

    q, k, v = rows_lib.on_rows(qkv, x, flat)
    if cache_offset is None:
      o = attn_lib.attention(cfg.attention, q, k, v, q_seg, k_seg, k_valid)
    else:
      end = cache_offset + x.shape[1]
      layer_cache = _write_cache(layer_cache, k, v, cache_offset, cfg.flat_rows)
      ck, cv = layer_cache['k'], layer_cache['v']
      if cfg.flat_rows:
        # A cached pass's queries (the prompt, or one whole scale) see every
        # valid key written so far.
        ck, cv = ck[..., :end].astype(cfg.dtype), cv[:, :, :end].astype(cfg.dtype)
        o = attn_lib.cached_attention_kt(q, ck, cv, k_valid)
      else:
        k, v = ck[:, :end].astype(cfg.dtype), cv[:, :end].astype(cfg.dtype)
        o = attn_lib.attention(cfg.attention, q, k, v, q_seg, k_seg, k_valid)
    out = _dense(cfg.d_model, ('heads', 'kv'), ('embed',), cfg, 'o', axis=(-2, -1))
    x = _constrain(x + rows_lib.on_rows(out, o, flat), 'batch', 'length', 'embed')
    x = _constrain(x + rows_lib.on_rows(mlp, x, flat), 'batch', 'length', 'embed')
    return x, layer_cache


def _write_cache(layer_cache: Cache, k, v, start: int, flat_rows: bool) -> Cache:
  """Writes a pass's keys/values [B, T, G, D] at [start, start + T) of one
  layer's cache (`init_cache`). With ``flat_rows`` (the CPU layout) keys are
  kept [B, G, D, L] and values [B, G, L, D], the operands of the two
  attention products, so no pass copies the cache to transpose it."""
  if flat_rows:
    k, v, k_axis, v_axis = k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3), 3, 2
  else:
    k_axis = v_axis = 1

  def put(c, new, axis):
    at = tuple(start if i == axis else 0 for i in range(c.ndim))
    return jax.lax.dynamic_update_slice(c, new.astype(c.dtype), at)

  return {'k': put(layer_cache['k'], k, k_axis), 'v': put(layer_cache['v'], v, v_axis)}


def scanned_blocks(block, cfg, num_layers: int, name: str):
  """``num_layers`` copies of ``block(cfg)`` as one scanned module: params and
  caches stacked on axis 0 ('layers'), optional rematerialisation by
  ``cfg.remat``. The block's call is ``(x, layer_cache, broadcast, offset)``."""
  if cfg.remat != 'none':
    policy = {
      'full': None,
      'dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    }[cfg.remat]
    # static_argnums counts `self` as 0: 4 is cache_offset.
    block = nn.remat(block, policy=policy, prevent_cse=False, static_argnums=(4,))
  return nn.scan(
    block,
    variable_axes={'params': 0},
    split_rngs={'params': True},
    in_axes=(0, nn.broadcast, nn.broadcast),
    out_axes=0,
    length=num_layers,
    unroll=cfg.scan_unroll,
    metadata_params={nn.PARTITION_NAME: 'layers'},
  )(cfg, name=name)


class NextScaleTransformer(nn.Module):
  """See the module docstring. Logits are float32."""

  cfg: TransformerConfig

  def setup(self):
    cfg = self.cfg
    emb = nn.initializers.normal(0.02)

    def table(name: str, rows_axis: str, rows: int):
      """A learned [rows, d_model] embedding table."""
      return self.param(
        name, _init(emb, rows_axis, 'embed'), (rows, cfg.d_model), cfg.param_dtype
      )

    self.text_embed = table('text_embed', 'text_vocab', cfg.text_vocab_size)
    self.text_pos = table('text_pos', 'text_length', cfg.text_len)
    if cfg.quote_slots:
      # Where a byte sits in the quoted text, counted from both ends of the
      # span (`text.quote_positions`): lets an image token find "the k-th
      # letter of the word to draw" with one attention lookup instead of
      # having to locate the quote marks first.
      self.quote_start = table('quote_start', 'quote_slots', cfg.quote_slots)
      self.quote_end = table('quote_end', 'quote_slots', cfg.quote_slots)
      # And from the word's centre, in half letters (from_start - from_end):
      # in a centred word of even advance, where the letter's column is.
      # A sum of the two tables above cannot express that difference.
      self.quote_centre = table('quote_centre', 'quote_slots', 2 * cfg.quote_slots - 1)
    self.image_pos = table('image_pos', 'image_length', cfg.schedule.num_tokens)
    self.scale_embed = table('scale_embed', 'scales', cfg.schedule.num_scales)
    self.start = self.param(
      'start', _init(emb, 'embed'), (cfg.d_model,), cfg.param_dtype
    )
    self.word_proj = nn.Dense(
      cfg.d_model,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      kernel_init=_init(nn.initializers.lecun_normal(), 'latent', 'embed'),
      bias_init=_init(nn.initializers.zeros, 'embed'),
      name='word_proj',
    )
    self.layers = scanned_blocks(Block, cfg, cfg.num_layers, 'layers')
    self.final_norm = RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype)
    self.head = nn.Dense(
      cfg.vocab_size,
      use_bias=False,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      kernel_init=_init(nn.initializers.normal(0.02), 'embed', 'vocab'),
      name='head',
    )

  # -- embeddings -----------------------------------------------------------

  def _embed_text(self, text_ids):
    x = jnp.take(self.text_embed, text_ids, axis=0) + self.text_pos[None]
    slots = self.cfg.quote_slots
    if slots:
      from_start, from_end = text_lib.quote_positions(text_ids)
      inside = (from_start >= 0)[..., None]
      centre = jnp.clip(from_start - from_end, 1 - slots, slots - 1) + slots - 1
      x = x + jnp.where(
        inside,
        jnp.take(self.quote_start, jnp.clip(from_start, 0, slots - 1), axis=0)
        + jnp.take(self.quote_end, jnp.clip(from_end, 0, slots - 1), axis=0)
        + jnp.take(self.quote_centre, centre, axis=0),
        0.0,
      )
    return x.astype(self.cfg.dtype)

  def _embed_image(self, inputs_blc, first: int, last: int):
    """Token inputs of scales [first, last): [B, n, C] -> [B, n, d]."""
    sched = self.cfg.schedule
    start, end = int(sched.offsets[first]), int(sched.offsets[last])
    x = self.word_proj(inputs_blc.astype(self.cfg.dtype))
    if first == 0:
      n0 = int(sched.counts[0])
      start_vec = jnp.broadcast_to(
        self.start.astype(x.dtype), (x.shape[0], n0, x.shape[2])
      )
      x = jnp.concatenate([start_vec, x[:, n0:]], axis=1)
    scale_ids = sched.scale_index[start:end]
    x = (
      x
      + self.image_pos[start:end][None]
      + jnp.take(self.scale_embed, scale_ids, axis=0)[None]
    )
    return x.astype(self.cfg.dtype)

  def _logits(self, x):
    # Without the constraint XLA may contract the fsdp-sharded embed axis
    # and keep the [B, L, V] logits whole on every chip (AOT v5p-128: 3 x
    # 19.7 GiB per chip for 64 cvtg rows).
    logits = rows_lib.on_rows(
      lambda h: self.head(self.final_norm(h)), x, self.cfg.flat_rows
    )
    logits = _constrain(logits, 'batch', 'length', 'vocab')
    return logits.astype(jnp.float32)

  # -- entry points ---------------------------------------------------------

  def __call__(self, text_ids, text_mask, inputs_blc, num_scales: int | None = None):
    """Teacher-forced logits [B, L_p, V] for the first ``num_scales`` scales.

    ``inputs_blc`` [B, L_p, C]: the next-scale inputs of those scales (the
    slots of scale 0 are ignored and replaced by the start vector).
    """
    cfg = self.cfg
    num_scales = cfg.schedule.num_scales if num_scales is None else num_scales
    x = jnp.concatenate(
      [self._embed_text(text_ids), self._embed_image(inputs_blc, 0, num_scales)], axis=1
    )
    x = _constrain(x, 'batch', 'length', 'embed')
    valid = jnp.concatenate(
      [text_mask, jnp.ones((x.shape[0], x.shape[1] - cfg.text_len), bool)], axis=1
    )
    x, _ = self.layers(x, None, valid, None)
    return self._logits(x[:, cfg.text_len :])

  def prefill(self, text_ids, text_mask, cache: Cache) -> Cache:
    """Writes the prompt's keys/values at [0, T_t) of the cache."""
    _, cache = self.layers(self._embed_text(text_ids), cache, text_mask, 0)
    return cache

  def step(self, inputs_bnc, s: int, text_mask, cache: Cache):
    """Logits [B, n_s, V] of scale s from its inputs; appends to the cache."""
    cfg = self.cfg
    sched = cfg.schedule
    x = self._embed_image(inputs_bnc, s, s + 1)
    offset = cfg.text_len + int(sched.offsets[s])
    k_valid = jnp.concatenate(
      [text_mask, jnp.ones((x.shape[0], int(sched.offsets[s + 1])), bool)], axis=1
    )
    x, cache = self.layers(x, cache, k_valid, offset)
    return self._logits(x), cache


def sequence_segments(cfg: TransformerConfig, start: int, length: int) -> np.ndarray:
  """int32 [length]: segment ids of positions [start, start + length) of the
  sequence [text | scale 0 | ...]: 0 for text, s + 1 for image scale s."""
  image = cfg.schedule.scale_index.astype(np.int32) + 1
  seg = np.concatenate([np.zeros(cfg.text_len, np.int32), image])
  return seg[start : start + length]


def init_cache(cfg: TransformerConfig, batch: int, dtype=None) -> Cache:
  """An empty KV cache for ``batch`` sequences of T_t + L positions: keys and
  values [layers, B, T_t + L, G, D]; with ``flat_rows`` (the CPU layout)
  keys [layers, B, G, D, T_t + L] and values [layers, B, G, T_t + L, D]."""
  n, b, t, g, d = cfg.num_layers, batch, cfg.seq_len, cfg.num_kv_heads, cfg.head_dim
  dtype = cfg.dtype if dtype is None else dtype
  if cfg.flat_rows:
    return {
      'k': jnp.zeros((n, b, g, d, t), dtype),
      'v': jnp.zeros((n, b, g, t, d), dtype),
    }
  return {
    'k': jnp.zeros((n, b, t, g, d), dtype),
    'v': jnp.zeros((n, b, t, g, d), dtype),
  }


def transformer_config(config: ml_collections.ConfigDict) -> TransformerConfig:
  """The static transformer config from the full config (``config.model``)."""
  mc = config.model
  schedule = ScaleSchedule.create(
    config.scales, config.image_size, config.tokenizer.downsample
  )
  head_dim = mc.head_dim or mc.d_model // mc.num_heads
  if mc.num_heads % mc.num_kv_heads:
    raise ValueError(
      f'config.model.num_heads={mc.num_heads} must be a multiple of '
      f'config.model.num_kv_heads={mc.num_kv_heads}'
    )
  check_modes(mc)
  return TransformerConfig(
    schedule=schedule,
    vocab_size=config.tokenizer.codebook_size,
    latent_dim=config.tokenizer.latent_dim,
    text_len=mc.text_len,
    num_layers=mc.num_layers,
    d_model=mc.d_model,
    num_heads=mc.num_heads,
    num_kv_heads=mc.num_kv_heads,
    head_dim=head_dim,
    mlp_dim=mc.mlp_dim,
    dtype=jnp.dtype(mc.dtype),
    param_dtype=jnp.dtype(mc.param_dtype),
    remat=mc.remat,
    attention=mc.attention,
    scan_unroll=mc.scan_unroll,
    quote_slots=mc.quote_slots,
    flat_rows=rows_lib.resolve_dense_layout(mc.dense_layout),
  )
