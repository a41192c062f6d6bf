"""The Infinity text-to-image transformer (FoundationVision/Infinity) in Flax.

Sequence ``[scale 0 | scale 1 | ... | scale S-1]`` of image tokens, block-
causal across scales; the text enters through cross-attention and AdaLN.
With Flan-T5 token embeddings ``t`` [B, T, Ct] and their mask:

- ``t_n = RMSNorm(t)``; ``c = TextPool(t_n)`` [B, C] (attentive pooling, the
  SOS and the AdaLN condition); ``m = TextProj(t_n)`` [B, T, C] (the
  cross-attention memory). Classifier-free guidance replaces ``t`` by
  ``cfg_uncond[:T]`` over the same valid tokens (`null_text`).
- inputs: scale 0 is ``c + pos_start``; scale s > 0 is ``word_embed(x_s)``
  with ``x_s`` [n_s, d] the BSQ VAE's next-scale input (the summed codes of
  scales < s, resized to grid s). Every token then adds ``lvl_embed[s]``
  (once, before block 0; no absolute positions: 2-D RoPE, `rope.py`).
- block: ``(g1, g2, s1, s2, b1, b2) = ada_gss + shared_ada_lin(silu(c))``;
  ``x += g1 SA(LN(x)(1 + s1) + b1)``; ``x += CA(x, m)``;
  ``x += g2 FFN(LN(x)(1 + s2) + b2)``. SA: ``qkv = x W + [b_q, 0, b_v]``,
  q and k L2-normalised, q times ``exp(min(scale_mul_h, ln 100))``, RoPE on
  both, softmax scale 1. FFN: fc1, GELU(tanh), fc2. LN without affine, eps 1e-6.
- head: ``head(LN(x)(1 + s) + b)``, ``(s, b) = head_nm(silu(c))``; logits
  [B, L, d, 2] float32 (their [B, L, 2d] viewed as d bits x 2 classes).

Entry points (``module.apply(..., method=...)``): `__call__` (teacher-forced
bit logits of the first ``num_scales`` scales), `prefill` (text -> context),
`step` (one scale against a KV cache, `init_cache`) and `null_text`. Blocks
are one scanned module (parameters stacked on 'layers'); every parameter
carries logical axis names.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from varrl_jax.models import attention as attn_lib
from varrl_jax.models import rows as rows_lib
from varrl_jax.models.infinity import rope
from varrl_jax.models.infinity.layers import (
  NUM_LEVELS,
  CrossAttention,
  InfinityConfig,
  TextNorm,
  TextPool,
  TextProj,
  constrain,
  dense,
  init,
  l2_normalize,
  layer_norm,
)
from varrl_jax.models.transformer import scanned_blocks

# {'k', 'v'}: [layers, B, H, L, D] (heads-major); {'ck', 'cv'}: the text
# memory's cross-attention keys/values [layers, B, T, H, D], written by step 0.
Cache = dict[str, jnp.ndarray]
# {'cond': [B, C] pooled text, 'memory': [B, T, C], 'text_mask': bool [B, T]}
Context = dict[str, jnp.ndarray]

MAX_SCALE_MUL = math.log(100.0)


class SelfAttention(nn.Module):
  """Cosine attention with 2-D RoPE; ``cache_offset`` as in `InfinityBlock`."""

  cfg: InfinityConfig

  @nn.compact
  def __call__(self, h, layer_cache, cache_offset):
    cfg = self.cfg
    sched = cfg.schedule
    heads = (cfg.num_heads, cfg.head_dim)
    qkv = dense((3, *heads), ('embed',), ('qkv', 'heads', 'kv'), cfg, 'qkv', False)
    qkv = rows_lib.on_rows(qkv, h, cfg.flat_rows)
    q_bias = self.param('q_bias', init(nn.initializers.zeros, 'heads', 'kv'), heads)
    v_bias = self.param('v_bias', init(nn.initializers.zeros, 'heads', 'kv'), heads)
    scale_mul = self.param(
      'scale_mul',
      init(nn.initializers.constant(math.log(4.0)), 'heads'),
      (cfg.num_heads,),
    )
    q = l2_normalize(qkv[:, :, 0] + q_bias.astype(cfg.dtype))
    q = q * jnp.exp(jnp.minimum(scale_mul, MAX_SCALE_MUL))[:, None].astype(cfg.dtype)
    k = l2_normalize(qkv[:, :, 1])
    v = qkv[:, :, 2] + v_bias.astype(cfg.dtype)
    start = 0 if cache_offset is None else cache_offset
    end = start + h.shape[1]
    cos, sin = rope.tables(sched.grids, cfg.rope_grid, cfg.head_dim)
    q = rope.apply(q, cos[start:end], sin[start:end])
    k = rope.apply(k, cos[start:end], sin[start:end])
    if cache_offset is None:
      seg = sched.scale_index[:end]
      k_valid = np.ones((h.shape[0], end), bool)
      o = attn_lib.attention(cfg.attention, q, k, v, seg, seg, k_valid, scale=1.0)
    else:
      # Heads-major cache [B, H, L, D]: a step's queries (one whole scale)
      # see every key written so far.
      def put(c, new):
        new = new.transpose(0, 2, 1, 3).astype(c.dtype)
        return jax.lax.dynamic_update_slice(c, new, (0, 0, start, 0))

      ck, cv = put(layer_cache['k'], k), put(layer_cache['v'], v)
      layer_cache = dict(layer_cache, k=ck, v=cv)
      k, v = ck[:, :, :end].astype(cfg.dtype), cv[:, :, :end].astype(cfg.dtype)
      o = attn_lib.cached_attention(q, k, v, 1.0)
    proj = dense(cfg.embed_dim, ('heads', 'kv'), ('embed',), cfg, 'proj', axis=(-2, -1))
    return rows_lib.on_rows(proj, o, cfg.flat_rows), layer_cache


class InfinityBlock(nn.Module):
  """One AdaLN self-attention + cross-attention + FFN block (scanned).

  ``ctx``: (gss [B, 6, C] = shared_ada_lin(silu(c)), memory [B, T, C],
  text_mask [B, T]). ``cache_offset`` None: no cache (teacher-forced);
  otherwise keys/values go to [offset, offset + n); offset 0 also writes the
  memory's cross-attention keys/values, which later steps read.
  """

  cfg: InfinityConfig

  @nn.compact
  def __call__(self, x, layer_cache, ctx, cache_offset=None):
    cfg = self.cfg
    gss, memory, text_mask = ctx
    ada_gss = self.param(
      'ada_gss',
      init(nn.initializers.normal(cfg.embed_dim**-0.5), 'adaln', 'embed'),
      (6, cfg.embed_dim),
      cfg.param_dtype,
    )
    mod = gss.astype(jnp.float32) + ada_gss.astype(jnp.float32)[None]
    g1, g2, s1, s2, b1, b2 = (mod[:, i][:, None] for i in range(6))

    h = (layer_norm(x, cfg.norm_eps) * (1 + s1) + b1).astype(cfg.dtype)
    o, layer_cache = SelfAttention(cfg, name='sa')(h, layer_cache, cache_offset)
    x = constrain(x + g1 * o, 'batch', 'length', 'embed')

    ca = CrossAttention(cfg, name='ca')
    if cache_offset is None or cache_offset == 0:
      mk, mv = ca.kv(memory)
      if cache_offset == 0:
        layer_cache = dict(layer_cache, ck=mk.astype(layer_cache['ck'].dtype))
        layer_cache['cv'] = mv.astype(layer_cache['cv'].dtype)
    else:
      mk = layer_cache['ck'].astype(cfg.dtype)
      mv = layer_cache['cv'].astype(cfg.dtype)
    x = constrain(x + ca(x, mk, mv, text_mask), 'batch', 'length', 'embed')

    def ffn(h):
      h = dense(cfg.mlp_dim, ('embed',), ('mlp',), cfg, 'fc1')(h)
      return dense(cfg.embed_dim, ('mlp',), ('embed',), cfg, 'fc2')(nn.gelu(h, True))

    h = (layer_norm(x, cfg.norm_eps) * (1 + s2) + b2).astype(cfg.dtype)
    x = constrain(
      x + g2 * rows_lib.on_rows(ffn, h, cfg.flat_rows), 'batch', 'length', 'embed'
    )
    return x, layer_cache


class AdaLin(nn.Module):
  """silu(c) W + b as [B, n, C] (shared_ada_lin: n = 6; head_nm: n = 2)."""

  cfg: InfinityConfig
  n: int

  @nn.compact
  def __call__(self, cond_bc):
    cfg = self.cfg
    lin = dense(
      (self.n, cfg.embed_dim), ('cond_embed',), ('adaln', 'embed'), cfg, 'lin'
    )
    return lin(nn.silu(cond_bc.astype(cfg.dtype))).astype(jnp.float32)


class InfinityTransformer(nn.Module):
  """See the module docstring."""

  cfg: InfinityConfig

  def setup(self):
    cfg = self.cfg
    c = cfg.embed_dim
    emb = nn.initializers.truncated_normal(math.sqrt(1 / c / 3))
    self.cfg_uncond = self.param(
      'cfg_uncond',
      init(
        nn.initializers.normal(1.2 / cfg.text_channels**0.5),
        'text_length',
        'text_embed',
      ),
      (cfg.text_maxlen, cfg.text_channels),
      cfg.param_dtype,
    )
    self.text_norm = TextNorm(cfg)
    self.text_pool = TextPool(cfg)
    self.text_proj = TextProj(cfg)
    self.pos_start = self.param('pos_start', init(emb, 'embed'), (c,), cfg.param_dtype)
    self.lvl_embed = self.param(
      'lvl_embed', init(emb, 'scales', 'embed'), (NUM_LEVELS, c), cfg.param_dtype
    )
    self.word_embed = dense(c, ('latent',), ('embed',), cfg)
    self.shared_ada_lin = AdaLin(cfg, 6)
    self.blocks = scanned_blocks(InfinityBlock, cfg, cfg.depth, 'blocks')
    self.head_nm = AdaLin(cfg, 2)
    self.head = dense((cfg.bits, 2), ('embed',), ('vocab', 'bit_class'), cfg)

  # -- pieces -----------------------------------------------------------------

  def null_text(self, text_mask_bt):
    """The unconditional text [B, T, Ct]: cfg_uncond[:T] on the valid tokens."""
    t = text_mask_bt.shape[1]
    if t > self.cfg.text_maxlen:
      raise ValueError(f'text length {t} > text_maxlen={self.cfg.text_maxlen}')
    null = self.cfg_uncond[:t].astype(jnp.float32)[None]
    return jnp.where(text_mask_bt[..., None], null, 0.0)

  def prefill(self, text_btc, text_mask_bt) -> Context:
    """The text context: pooled condition c, memory m and the mask."""
    t = self.text_norm(text_btc)
    return {
      'cond': self.text_pool(t, text_mask_bt),
      'memory': self.text_proj(t),
      'text_mask': text_mask_bt.astype(bool),
    }

  def _embed(self, cond_bc, inputs_bld, first: int, last: int):
    """Inputs of scales [first, last): [B, n, d] -> [B, n, C]."""
    cfg = self.cfg
    sched = cfg.schedule
    start, end = int(sched.offsets[first]), int(sched.offsets[last])
    x = self.word_embed(inputs_bld.astype(cfg.dtype)).astype(jnp.float32)
    if first == 0:
      sos = cond_bc.astype(jnp.float32) + self.pos_start.astype(jnp.float32)
      x = jnp.concatenate([sos[:, None], x[:, 1:]], axis=1)
    lvl = jnp.take(self.lvl_embed, sched.scale_index[start:end], axis=0)
    # The residual stream stays float32 whatever cfg.dtype (as theirs).
    return x + lvl.astype(jnp.float32)[None]

  def _logits(self, x, cond_bc):
    mod = self.head_nm(cond_bc)
    h = layer_norm(x, self.cfg.norm_eps) * (1 + mod[:, 0][:, None]) + mod[:, 1][:, None]
    logits = rows_lib.on_rows(self.head, h.astype(self.cfg.dtype), self.cfg.flat_rows)
    return constrain(logits, 'batch', 'length', 'vocab', 'bit_class').astype(
      jnp.float32
    )

  def _ctx(self, ctx: Context):
    return (self.shared_ada_lin(ctx['cond']), ctx['memory'], ctx['text_mask'])

  # -- entry points -----------------------------------------------------------

  def __call__(self, text_btc, text_mask_bt, inputs_bld, num_scales: int | None = None):
    """Teacher-forced bit logits [B, L_p, d, 2] of the first ``num_scales``.

    ``text_btc`` [B, T, Ct] with ``text_mask_bt`` bool [B, T] (True: a valid
    token); ``inputs_bld`` [B, L_p, d]: the next-scale inputs of those scales
    (the slot of scale 0 is ignored: its input is the pooled text).
    """
    num_scales = self.cfg.schedule.num_scales if num_scales is None else num_scales
    ctx = self.prefill(text_btc, text_mask_bt)
    x = self._embed(ctx['cond'], inputs_bld, 0, num_scales)
    x = constrain(x, 'batch', 'length', 'embed')
    x, _ = self.blocks(x, None, self._ctx(ctx), None)
    return self._logits(x, ctx['cond'])

  def step(self, inputs_bnd, s: int, ctx: Context, cache: Cache):
    """Bit logits [B, n_s, d, 2] of scale s from its inputs [B, n_s, d]
    (ignored at s = 0); appends to the cache. Steps run s = 0, 1, ... ."""
    x = self._embed(ctx['cond'], inputs_bnd, s, s + 1)
    offset = int(self.cfg.schedule.offsets[s])
    x, cache = self.blocks(x, cache, self._ctx(ctx), offset)
    return self._logits(x, ctx['cond']), cache


def init_cache(cfg: InfinityConfig, batch: int, text_len: int, dtype=None) -> Cache:
  """An empty KV cache for ``batch`` sequences and ``text_len`` text tokens."""
  dtype = cfg.dtype if dtype is None else dtype
  sa = (cfg.depth, batch, cfg.num_heads, cfg.seq_len, cfg.head_dim)
  ca = (cfg.depth, batch, text_len, cfg.num_heads, cfg.head_dim)
  z = jnp.zeros
  return {'k': z(sa, dtype), 'v': z(sa, dtype), 'ck': z(ca, dtype), 'cv': z(ca, dtype)}
