"""The ``var`` family: FoundationVision/VAR, class-conditional on ImageNet.

A prompt is a class id as a string (``'207'``); the conditioning is
``{'label': int32 [B]}`` and the null (CFG) class is ``num_classes``. The
transformer (`transformer.py`) has no prompt prefix: `prefill` only looks up
the class vectors that every block's AdaLN and the head read. The tokenizer
is their multi-scale VQ-VAE (`vqvae.py`): images in [-1, 1], the next scale's
input is torch's area resize of f_hat.

Config: ``config.model.var`` (depth, width, heads, classes, shared AdaLN);
the VQ-VAE reads ``config.tokenizer`` (``channels`` = ch x ch_mult,
``num_res_blocks``, ``latent_dim`` = Cvae, ``codebook_size`` = V,
``phi_count`` = share_quant_resi, ``phi_ratio`` = quant_resi); the scales
are square patch grids whose last side is image / 16.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from varrl_jax.models import family as family_lib
from varrl_jax.models import rows as rows_lib
from varrl_jax.models.schedule import ScaleSchedule
from varrl_jax.models.text import PromptError
from varrl_jax.models.var_official import transformer as tr_lib
from varrl_jax.models.var_official import vqvae as vq_lib

# A few ImageNet classes (the official demo's and some more) for `sample`.
EXAMPLE_CLASSES = ('207', '360', '387', '974', '88', '979', '417', '279')


@dataclasses.dataclass(frozen=True, eq=False)
class VarFamilyModel(family_lib.NextScaleModel):
  """Static description of a VAR model (modules + schedule); no weights."""

  tokenizer: vq_lib.VarVQVAE
  transformer: tr_lib.VarTransformer
  cfg: tr_lib.VarConfig
  # The same parameters, unrolled as config.model.sample_scan_unroll says:
  # the KV-cached steps of the sampler.
  sampler_transformer: tr_lib.VarTransformer
  family = 'var'
  example_prompts = EXAMPLE_CLASSES

  @property
  def dims(self) -> family_lib.TransformerDims:
    c = self.cfg
    return family_lib.TransformerDims(
      schedule=c.schedule,
      prefix_len=0,
      num_layers=c.depth,
      d_model=c.embed_dim,
      num_heads=c.num_heads,
      num_kv_heads=c.num_heads,
      head_dim=c.head_dim,
      mlp_dim=c.mlp_dim,
      mlp_mats=2,
      vocab_size=c.vocab_size,
      remat=c.remat,
    )

  # -- conditioning -------------------------------------------------------------

  def encode_prompts(self, prompts: Sequence[str]) -> family_lib.Cond:
    labels = []
    n = self.cfg.num_classes
    for i, p in enumerate(prompts):
      text = str(p).strip()
      if not text.lstrip('-').isdigit() or not 0 <= int(text) < n:
        raise PromptError(
          f'prompt {i} ({str(p)[:40]!r}) is not a class id: the var family takes '
          f'class ids 0..{n - 1}'
        )
      labels.append(int(text))
    return {'label': np.asarray(labels, np.int32)}

  def null_cond(self, batch: int) -> family_lib.Cond:
    return {'label': np.full((batch,), self.cfg.null_class, np.int32)}

  # -- parameters ---------------------------------------------------------------

  def init_boxed(self, key: jax.Array, parts=('tokenizer', 'transformer')) -> dict:
    k_tok, k_tr = jax.random.split(key)
    out = {}
    if 'tokenizer' in parts:
      h, w = self.schedule.image_size
      out['tokenizer'] = self.tokenizer.init(
        k_tok, jnp.zeros((1, h, w, 3), jnp.float32)
      )
    if 'transformer' in parts:
      labels = jnp.zeros((1,), jnp.int32)
      inputs = jnp.zeros((1, self.schedule.num_tokens, self.latent_dim), jnp.float32)
      out['transformer'] = self.transformer.init(k_tr, labels, inputs)
    return out

  # -- transformer --------------------------------------------------------------

  def logits(self, transformer_params, cond, inputs_blc, num_scales=None):
    return self.transformer.apply(
      transformer_params, cond['label'], inputs_blc, num_scales
    )

  def init_cache(self, batch: int, dtype=None):
    return tr_lib.init_cache(self.cfg, batch, dtype)

  def prefill(self, transformer_params, cond, cache):
    cond_bd = self.sampler_transformer.apply(
      transformer_params, cond['label'], method=tr_lib.VarTransformer.condition
    )
    return {'cond_bd': cond_bd}, cache

  def step(self, transformer_params, inputs_bnc, s: int, ctx, cache):
    return self.sampler_transformer.apply(
      transformer_params,
      inputs_bnc,
      s,
      ctx['cond_bd'],
      cache,
      method=tr_lib.VarTransformer.step,
    )

  # -- tokenizer ----------------------------------------------------------------

  def scale_residual(self, params: dict, ids_bhw, s: int):
    return self.tokenizer.apply(
      params['tokenizer'], ids_bhw, s, method=vq_lib.VarVQVAE.scale_residual
    )

  def next_input(self, f_hat, s: int):
    grid = self.schedule.grids[s]
    x = vq_lib.next_scale_input(f_hat, grid)
    return x.reshape(x.shape[0], grid[0] * grid[1], x.shape[-1])

  def decode_fhat(self, params: dict, f_hat):
    img = self.tokenizer.apply(
      params['tokenizer'], f_hat, method=vq_lib.VarVQVAE.decode
    )
    return to_uint8(img)

  def encode_images(self, params: dict, images_u8):
    family_lib.check_images(images_u8, self.schedule.image_size)
    x = jnp.asarray(images_u8, jnp.float32) / 127.5 - 1.0
    ids = self.tokenizer.apply(
      params['tokenizer'], x, method=vq_lib.VarVQVAE.encode_to_scales
    )
    return jnp.concatenate([r.reshape(r.shape[0], -1) for r in ids], axis=1)


def to_uint8(img_m11):
  """[-1, 1] -> uint8 (their ``(x + 1) / 2`` in [0, 1], rounded to 255 levels)."""
  x = (jnp.asarray(img_m11, jnp.float32) + 1.0) * 127.5
  return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


def _patch_nums(config) -> tuple[int, ...]:
  sides = []
  for i, grid in enumerate(config.scales):
    h, w = (grid, grid) if isinstance(grid, int) else tuple(grid)
    if h != w:
      raise ValueError(
        f'config.scales[{i}]={tuple(grid)}: the var family has square patch grids'
      )
    sides.append(int(h))
  return tuple(sides)


def build(config: ml_collections.ConfigDict) -> VarFamilyModel:
  """Validates ``config.model.var`` / ``config.tokenizer`` and builds the modules."""
  mc, tc = config.model.var, config.tokenizer
  schedule = ScaleSchedule.create(config.scales, config.image_size, tc.downsample)
  ch, ch_mult = family_lib.vae_channels(tc)
  if ch % 32:
    raise ValueError(
      f'config.tokenizer.channels[0]={ch}: GroupNorm(32) needs a multiple of 32'
    )
  depth = int(mc.depth)
  embed_dim = int(mc.embed_dim) or 64 * depth
  num_heads = int(mc.num_heads) or depth
  if depth < 1 or embed_dim % num_heads:
    raise ValueError(
      f'config.model.var: depth={depth}, embed_dim={embed_dim} must be a positive '
      f'multiple of num_heads={num_heads}'
    )
  mcommon = config.model
  family_lib.check_modes(mcommon)
  tokenizer = vq_lib.VarVQVAE(
    vocab_size=int(tc.codebook_size),
    z_channels=int(tc.latent_dim),
    ch=ch,
    ch_mult=ch_mult,
    num_res_blocks=int(tc.num_res_blocks),
    share_quant_resi=int(tc.phi_count),
    quant_resi=float(tc.phi_ratio),
    patch_nums=_patch_nums(config),
    dtype=jnp.dtype(tc.dtype),
  )
  cfg = tr_lib.VarConfig(
    schedule=schedule,
    vocab_size=int(tc.codebook_size),
    latent_dim=int(tc.latent_dim),
    depth=depth,
    embed_dim=embed_dim,
    num_heads=num_heads,
    mlp_ratio=float(mc.mlp_ratio),
    num_classes=int(mc.num_classes),
    shared_aln=bool(mc.shared_aln),
    dtype=jnp.dtype(mcommon.dtype),
    param_dtype=jnp.dtype(mcommon.param_dtype),
    remat=mcommon.remat,
    attention=mcommon.attention,
    scan_unroll=int(mcommon.scan_unroll),
    flat_rows=rows_lib.resolve_dense_layout(mcommon.dense_layout),
  )
  unroll = family_lib.sample_scan_unroll(config, depth)
  return VarFamilyModel(
    tokenizer=tokenizer,
    transformer=tr_lib.VarTransformer(cfg),
    cfg=cfg,
    sampler_transformer=tr_lib.VarTransformer(
      dataclasses.replace(cfg, scan_unroll=unroll)
    ),
  )
