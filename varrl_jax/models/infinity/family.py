"""The ``infinity`` family: FoundationVision/Infinity text-to-image (2B, 8B).

Prompts are free text, encoded by a frozen Flan-T5 encoder
(`models/t5_embedder.py`, loaded lazily from ``config.model.infinity.
text_encoder``; each prompt once, cached on the host). The conditioning is

  ``{'text': float32 [B, T, Ct], 'mask': bool [B, T], 'null': bool [B]}``

with T = ``config.model.infinity.text_len`` (their tokenizer's max_length,
512) and the embeddings zero past each prompt. A null row is the official
unconditional text, ``cfg_uncond[:len]`` over the same valid tokens as its
conditional row (`with_null`); it is substituted inside the jitted
transformer call, so it always uses the current ``cfg_uncond`` parameter.

Tokens are bits, [B, L, d] int8 (`bitwise.Bitwise`: a token's log-prob is
the sum of its d bit log-probs); the transformer's logits are [B, L, d, 2].
The tokenizer is their BSQ VAE (`bsq_vae`, `bsq_quantizer`): a scale's bits
map to codes (2b - 1)/sqrt(d) upsampled to the latent grid and summed into
f_hat; the next scale's input is f_hat resized to its grid. With the 2x2
spatial patchify (8B) a token holds 4 VAE cells, d = 4 x 14 = 56, and the
latent grid is twice the last token grid per side.

Config: ``config.model.infinity`` (preset or explicit sizes, text encoder),
``config.tokenizer`` (``channels`` = ch x ch_mult, ``num_res_blocks``,
``latent_dim`` = the VAE's bits d, ``downsample`` = its stride),
``config.scales`` = the transformer grids (`schedules.scale_schedule`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from varrl_jax.models import family as family_lib
from varrl_jax.models import rows as rows_lib
from varrl_jax.models.infinity import bitwise, schedules
from varrl_jax.models.infinity import bsq_quantizer as bq
from varrl_jax.models.infinity import bsq_vae as vae_lib
from varrl_jax.models.infinity import layers as layers_lib
from varrl_jax.models.infinity import transformer as tr_lib
from varrl_jax.models.schedule import ScaleSchedule

EXAMPLE_PROMPTS = (
  'a cozy bookstore window with a sign that says "OPEN LATE"',
  'a red fox sitting in fresh snow, morning light',
  'a vintage travel poster with the words "VISIT MARS"',
  'a bowl of ramen on a wooden table, studio photo',
)


class TextEncoderError(ValueError):
  """The Flan-T5 folder of ``config.model.infinity.text_encoder`` is unusable."""


def _substitute_null(module, text, mask, null):
  """Rows with ``null`` take the official unconditional text (cfg_uncond)."""
  return jnp.where(null[:, None, None], module.null_text(mask), text)


def _teacher_logits(module, text, mask, null, inputs, num_scales):
  return module(_substitute_null(module, text, mask, null), mask, inputs, num_scales)


def _prefill(module, text, mask, null):
  return module.prefill(_substitute_null(module, text, mask, null), mask)


@dataclasses.dataclass(frozen=True, eq=False)
class InfinityFamilyModel(family_lib.NextScaleModel):
  """Static description of an Infinity model (modules + schedule)."""

  tokenizer: vae_lib.BSQVAE
  transformer: tr_lib.InfinityTransformer
  cfg: layers_lib.InfinityConfig
  sampler_transformer: tr_lib.InfinityTransformer
  text_len: int
  text_encoder: str  # a local Hugging Face Flan-T5 folder ('' = none given)
  init_checkpoint: str = ''  # its manifest names the folder when the above is ''
  family = 'infinity'
  example_prompts = EXAMPLE_PROMPTS

  # -- static facts -------------------------------------------------------------

  @property
  def schedule(self) -> ScaleSchedule:
    return self.cfg.schedule

  @property
  def latent_dim(self) -> int:
    return self.tokenizer.codebook_dim

  @property
  def input_dim(self) -> int:
    return self.cfg.bits

  @property
  def vocab_size(self) -> int:
    return 2 * self.cfg.bits  # head outputs (d bits x 2 classes), for FLOPs

  @property
  def dist(self) -> bitwise.Bitwise:
    return bitwise.Bitwise(self.cfg.bits)

  @property
  def patchify(self) -> bool:
    return self.tokenizer.apply_spatial_patchify

  @property
  def vae_grids(self) -> tuple[tuple[int, int], ...]:
    return schedules.vae_grids(self.schedule.grids, self.patchify)

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
      vocab_size=self.vocab_size,
      remat=c.remat,
      cross_len=self.text_len,
    )

  # -- conditioning -------------------------------------------------------------

  @functools.cached_property
  def embedder(self):
    """The Flan-T5 `PromptEmbedder`, loaded on first use (host, cached)."""
    from varrl_jax.models import t5_embedder

    folder = self.text_encoder or self._converted_text_encoder()
    if not folder:
      raise TextEncoderError(
        'config.model.infinity.text_encoder is empty (and config.init_checkpoint '
        'names none): the infinity family encodes prompts with a local Flan-T5 '
        'folder (config.json, model.safetensors, spiece.model)'
      )
    try:
      # ~4096 x 60 tokens x 2048 x 4 B ~ 2 GB of host memory at most; an
      # evicted prompt is encoded again to the same numbers.
      return t5_embedder.PromptEmbedder.from_folder(
        folder, max_length=self.text_len, cache_size=4096
      )
    except (OSError, ValueError) as e:
      raise TextEncoderError(f'config.model.infinity.text_encoder: {e}') from None

  def _converted_text_encoder(self) -> str:
    """The Flan-T5 folder recorded along ``config.init_checkpoint``'s lineage
    ('' if none): its manifest's config, else the checkpoint it started from
    (an RL run's ``init_checkpoint``, a separate LoRA export's base), back to
    the `varrl_jax.convert` output that names it."""
    from varrl_jax import checkpoint

    path, seen = self.init_checkpoint, set()
    while path and path not in seen and len(seen) < 16:
      seen.add(path)
      try:
        saved = checkpoint.read_manifest(path)
      except checkpoint.CheckpointError:  # reported when the weights load
        return ''
      config = saved.get('config') or {}
      folder = config.get('model', {}).get('infinity', {}).get('text_encoder', '')
      if folder:
        return str(folder)
      path = (saved.get('lora') or {}).get('base') or config.get('init_checkpoint', '')
    return ''

  def encode_prompts(self, prompts: Sequence[str]) -> family_lib.Cond:
    out = self.embedder([str(p) for p in prompts])
    if out.embeddings.shape[-1] != self.cfg.text_channels:
      raise TextEncoderError(
        f'config.model.infinity.text_encoder={self.text_encoder}: embeddings of '
        f'width {out.embeddings.shape[-1]}, the transformer takes '
        f'text_channels={self.cfg.text_channels}'
      )
    return {
      'text': np.asarray(out.embeddings, np.float32),
      'mask': np.asarray(out.mask, bool),
      'null': np.zeros((len(prompts),), bool),
    }

  def null_cond(self, batch: int) -> family_lib.Cond:
    # Standalone (shapes, AOT): the null text of a one-token prompt. CFG
    # rows come from `with_null`, which keeps each prompt's length.
    mask = np.zeros((batch, self.text_len), bool)
    mask[:, 0] = True
    return {
      'text': np.zeros((batch, self.text_len, self.cfg.text_channels), np.float32),
      'mask': mask,
      'null': np.ones((batch,), bool),
    }

  def with_null(self, cond: family_lib.Cond) -> family_lib.Cond:
    """[cond; null] where each null row keeps its prompt's valid tokens (their
    ``kv_compact_un[..] = cfg_uncond[:len]``)."""
    mask = jnp.asarray(cond['mask'])
    null = jnp.asarray(cond['null'])
    return {
      'text': jnp.concatenate([cond['text'], jnp.zeros_like(cond['text'])], 0),
      'mask': jnp.concatenate([mask, mask], 0),
      'null': jnp.concatenate([null, jnp.ones_like(null)], 0),
    }

  def truncate_prompt(self, prompt: str) -> str:
    return prompt  # the T5 tokenizer truncates at text_len tokens

  def check_prompts(self, prompts: Sequence[str]) -> None:
    del prompts  # any text conditions (truncated at text_len T5 tokens)

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
      text = jnp.zeros((1, self.text_len, self.cfg.text_channels), jnp.float32)
      mask = jnp.ones((1, self.text_len), bool)
      inputs = jnp.zeros((1, self.schedule.num_tokens, self.input_dim), jnp.float32)
      out['transformer'] = self.transformer.init(k_tr, text, mask, inputs)
    return out

  # -- transformer --------------------------------------------------------------

  def logits(self, transformer_params, cond, inputs_blc, num_scales=None):
    return self.transformer.apply(
      transformer_params,
      cond['text'],
      cond['mask'],
      cond['null'],
      inputs_blc,
      num_scales,
      method=_teacher_logits,
    )

  def init_cache(self, batch: int, dtype=None):
    return tr_lib.init_cache(self.cfg, batch, self.text_len, dtype)

  def prefill(self, transformer_params, cond, cache):
    ctx = self.sampler_transformer.apply(
      transformer_params, cond['text'], cond['mask'], cond['null'], method=_prefill
    )
    return ctx, cache

  def step(self, transformer_params, inputs_bnc, s: int, ctx, cache):
    return self.sampler_transformer.apply(
      transformer_params,
      inputs_bnc,
      s,
      ctx,
      cache,
      method=tr_lib.InfinityTransformer.step,
    )

  # -- tokenizer ----------------------------------------------------------------

  def zero_fhat(self, batch: int):
    h, w = self.vae_grids[-1]
    return jnp.zeros((batch, h, w, self.latent_dim), jnp.float32)

  def scale_residual(self, params: dict, ids_bhw, s: int):
    del params, s  # the BSQ codes have no parameters
    return bq.scale_residual(ids_bhw, self.vae_grids[-1], self.patchify)

  def next_input(self, f_hat, s: int):
    return bq.next_scale_input(f_hat, self.vae_grids[s], self.patchify)

  def decode_fhat(self, params: dict, f_hat):
    img = self.tokenizer.apply(params['tokenizer'], f_hat, method=vae_lib.BSQVAE.decode)
    return bq.to_uint8(img)

  def encode_images(self, params: dict, images_u8):
    family_lib.check_images(images_u8, self.schedule.image_size)
    x = jnp.asarray(images_u8, jnp.float32) / 127.5 - 1.0
    bits, _, _ = self.tokenizer.apply(
      params['tokenizer'],
      x,
      self.schedule.grids,
      method=vae_lib.BSQVAE.encode_to_tokens,
    )
    b = x.shape[0]
    return jnp.concatenate(
      [t.reshape(b, -1, self.cfg.bits).astype(jnp.int8) for t in bits], axis=1
    )


def _rope_grid(image_size: tuple[int, int]) -> tuple[int, int]:
  """Their RoPE reference: the last '1M' grid of the image's aspect ratio."""
  h, w = image_size
  ratio = round(h / w, 3)
  if ratio not in schedules.RATIO2HWS:
    raise ValueError(
      f'config.image_size={tuple(image_size)}: h/w={h / w:.3f} is not an Infinity '
      f'aspect ratio (templates: {schedules.H_DIV_W_TEMPLATES})'
    )
  return tuple(schedules.scale_schedule(ratio, '1M')[-1])


def _int_or(value: Any, default: int) -> int:
  return int(value) if int(value) > 0 else int(default)


def build(config: ml_collections.ConfigDict) -> InfinityFamilyModel:
  """Validates ``config.model.infinity`` / ``config.tokenizer``; builds modules."""
  ic, tc, mc = config.model.infinity, config.tokenizer, config.model
  ch, ch_mult = family_lib.vae_channels(tc)
  patchify = bool(ic.spatial_patchify)
  stride = int(tc.downsample) * (2 if patchify else 1)
  schedule = ScaleSchedule.create(config.scales, config.image_size, stride)
  bits = int(tc.latent_dim) * (4 if patchify else 1)
  if ic.preset:
    if ic.preset not in layers_lib.PRESETS:
      raise ValueError(
        f'config.model.infinity.preset={ic.preset!r}: expected one of '
        f"{sorted(layers_lib.PRESETS)} or '' (sizes from depth/embed_dim/num_heads)"
      )
    sizes = dict(layers_lib.PRESETS[ic.preset])
    if sizes['bits'] != bits:
      raise ValueError(
        f'config.model.infinity.preset={ic.preset!r} has {sizes["bits"]}-bit tokens '
        f'but config.tokenizer.latent_dim={tc.latent_dim} with spatial_patchify='
        f'{patchify} gives {bits}'
      )
  else:
    sizes = dict(depth=0, embed_dim=0, num_heads=0)
  family_lib.check_modes(mc)
  depth = _int_or(ic.depth, sizes['depth'])
  embed_dim = _int_or(ic.embed_dim, sizes['embed_dim'])
  num_heads = _int_or(ic.num_heads, sizes['num_heads'])
  if min(depth, embed_dim, num_heads) < 1:
    raise ValueError(
      'config.model.infinity: set preset, or depth, embed_dim and num_heads > 0'
    )
  text_len = int(ic.text_len)
  if not 1 <= text_len <= int(ic.text_maxlen):
    raise ValueError(
      f'config.model.infinity.text_len={text_len} must be in 1..text_maxlen='
      f'{ic.text_maxlen}'
    )
  try:
    cfg = layers_lib.InfinityConfig(
      schedule=schedule,
      rope_grid=_rope_grid(schedule.image_size),
      bits=bits,
      depth=depth,
      embed_dim=embed_dim,
      num_heads=num_heads,
      mlp_ratio=float(ic.mlp_ratio),
      text_channels=int(ic.text_channels),
      text_maxlen=int(ic.text_maxlen),
      dtype=jnp.dtype(mc.dtype),
      param_dtype=jnp.dtype(mc.param_dtype),
      remat=mc.remat,
      attention=mc.attention,
      scan_unroll=int(mc.scan_unroll),
      flat_rows=rows_lib.resolve_dense_layout(mc.dense_layout),
    )
  except ValueError as e:
    raise ValueError(f'config.model.infinity: {e}') from None
  tokenizer = vae_lib.BSQVAE(
    codebook_dim=int(tc.latent_dim),
    ch=ch,
    ch_mult=ch_mult,
    num_res_blocks=int(tc.num_res_blocks),
    patch_size=int(tc.downsample),
    apply_spatial_patchify=patchify,
    dtype=jnp.dtype(tc.dtype),
  )
  unroll = family_lib.sample_scan_unroll(config, depth)
  return InfinityFamilyModel(
    tokenizer=tokenizer,
    transformer=tr_lib.InfinityTransformer(cfg),
    cfg=cfg,
    sampler_transformer=tr_lib.InfinityTransformer(
      dataclasses.replace(cfg, scan_unroll=unroll)
    ),
    text_len=text_len,
    text_encoder=str(ic.text_encoder),
    init_checkpoint=str(config.init_checkpoint),
  )
