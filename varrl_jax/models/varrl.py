"""The ``varrl`` family: our text-prefix tokenizer + next-scale transformer.

Parameters are one pytree ``{'tokenizer': ..., 'transformer': ...}`` (linen
variable dicts; transformer leaves are ``nn.Partitioned`` boxes carrying
logical axis names until unboxed). RL trains only the transformer; the
tokenizer is frozen. Conditioning: the prompt's bytes (`models/text.py`) in
the sequence prefix, ``{'text_ids': int32 [B, T_t], 'text_mask': bool [B,
T_t]}``; the null prompt (CFG) is the empty prompt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from varrl_jax.models import family as family_lib
from varrl_jax.models import resize
from varrl_jax.models import text as text_lib
from varrl_jax.models import tokenizer as tok_lib
from varrl_jax.models import transformer as tr_lib


@dataclasses.dataclass(frozen=True, eq=False)
class VarrlModel(family_lib.NextScaleModel):
  """Static description of the model (modules + schedule); holds no weights."""

  tokenizer: tok_lib.MultiScaleVQVAE
  transformer: tr_lib.NextScaleTransformer
  cfg: tr_lib.TransformerConfig
  # The same parameters, unrolled as config.model.sample_scan_unroll says:
  # the KV-cached steps of the sampler.
  sampler_transformer: tr_lib.NextScaleTransformer
  family = 'varrl'
  shared_null_prefill = True  # the empty prompt's text prefix
  example_prompts = (
    "a wooden sign on a wall that reads 'OPEN'",
    "a red poster that reads 'SALE'",
    "a shop front with a banner that reads 'CAFE'",
    "a chalkboard that reads 'HOT' and 'TEA'",
  )

  @property
  def dims(self) -> family_lib.TransformerDims:
    c = self.cfg
    return family_lib.TransformerDims(
      schedule=c.schedule,
      prefix_len=c.text_len,
      num_layers=c.num_layers,
      d_model=c.d_model,
      num_heads=c.num_heads,
      num_kv_heads=c.num_kv_heads,
      head_dim=c.head_dim,
      mlp_dim=c.mlp_dim,
      mlp_mats=3,
      vocab_size=c.vocab_size,
      remat=c.remat,
    )

  # -- conditioning -------------------------------------------------------------

  def encode_prompts(self, prompts: Sequence[str]) -> family_lib.Cond:
    ids, mask = text_lib.encode(list(prompts), self.cfg.text_len)
    return {'text_ids': ids, 'text_mask': mask}

  def null_cond(self, batch: int) -> family_lib.Cond:
    ids, mask = text_lib.null_prompt(batch, self.cfg.text_len)
    return {'text_ids': ids, 'text_mask': mask}

  def truncate_prompt(self, prompt: str) -> str:
    return text_lib.truncate(prompt, self.cfg.text_len)

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
      text = jnp.zeros((1, self.cfg.text_len), jnp.int32)
      inputs = jnp.zeros(
        (1, self.schedule.num_tokens, self.cfg.latent_dim), jnp.float32
      )
      out['transformer'] = self.transformer.init(k_tr, text, text > 0, inputs)
    return out

  # -- transformer --------------------------------------------------------------

  def logits(self, transformer_params, cond, inputs_blc, num_scales=None):
    return self.transformer.apply(
      transformer_params, cond['text_ids'], cond['text_mask'], inputs_blc, num_scales
    )

  def init_cache(self, batch: int, dtype=None):
    return tr_lib.init_cache(self.cfg, batch, dtype)

  def prefill(self, transformer_params, cond, cache):
    cache = self.sampler_transformer.apply(
      transformer_params,
      cond['text_ids'],
      cond['text_mask'],
      cache,
      method=tr_lib.NextScaleTransformer.prefill,
    )
    return {'text_mask': cond['text_mask']}, cache

  def step(self, transformer_params, inputs_bnc, s: int, ctx, cache):
    return self.sampler_transformer.apply(
      transformer_params,
      inputs_bnc,
      s,
      ctx['text_mask'],
      cache,
      method=tr_lib.NextScaleTransformer.step,
    )

  # -- tokenizer ----------------------------------------------------------------

  def scale_residual(self, params: dict, ids_bhw: jnp.ndarray, s: int) -> jnp.ndarray:
    """h_s = phi_s(bicubic(E[ids])) at the latent size, [B, h, w, C]."""
    return self.tokenizer.apply(
      params['tokenizer'], ids_bhw, s, method=tok_lib.MultiScaleVQVAE.scale_residual
    )

  def next_input(self, f_hat: jnp.ndarray, s: int) -> jnp.ndarray:
    """Input of scale s: f_hat (scales < s) area-resized to (h_s, w_s), [B, n_s, C]."""
    grid = self.schedule.grids[s]
    x = resize.resize(f_hat, grid, 'area')
    return x.reshape(x.shape[0], grid[0] * grid[1], x.shape[-1])

  def decode_tokens(self, params: dict, tokens_bl: jnp.ndarray) -> jnp.ndarray:
    """Token ids [B, L] -> uint8 images [B, H, W, 3]."""
    ids = [self.scale_ids(tokens_bl, s) for s in range(self.schedule.num_scales)]
    logits = self.tokenizer.apply(
      params['tokenizer'], ids, method=tok_lib.MultiScaleVQVAE.decode_from_scales
    )
    return tok_lib.to_uint8(logits)

  def decode_fhat(self, params: dict, f_hat: jnp.ndarray) -> jnp.ndarray:
    logits = self.tokenizer.apply(
      params['tokenizer'], f_hat, method=tok_lib.MultiScaleVQVAE.decode
    )
    return tok_lib.to_uint8(logits)

  def encode_images(self, params: dict, images_u8: jnp.ndarray) -> jnp.ndarray:
    """uint8 [B, H, W, 3] -> token ids [B, L] (tokenizer's residual quantization)."""
    family_lib.check_images(images_u8, self.schedule.image_size)
    x = jnp.asarray(images_u8, jnp.float32) / 255.0
    ids = self.tokenizer.apply(
      params['tokenizer'], x, method=tok_lib.MultiScaleVQVAE.encode_to_scales
    )
    return jnp.concatenate([r.reshape(r.shape[0], -1) for r in ids], axis=1)


def build(config: ml_collections.ConfigDict) -> VarrlModel:
  """Validates the config's model fields and builds the modules."""
  cfg = tr_lib.transformer_config(config)
  unroll = family_lib.sample_scan_unroll(config, cfg.num_layers)
  return VarrlModel(
    tokenizer=tok_lib.build_tokenizer(config),
    transformer=tr_lib.NextScaleTransformer(cfg),
    cfg=cfg,
    sampler_transformer=tr_lib.NextScaleTransformer(
      dataclasses.replace(cfg, scan_unroll=unroll)
    ),
  )
