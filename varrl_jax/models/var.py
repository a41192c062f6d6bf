"""The VAR model: tokenizer + next-scale transformer, built from one config.

Parameters are one pytree ``{'tokenizer': ..., 'transformer': ...}`` (linen
variable dicts; transformer leaves are ``nn.Partitioned`` boxes carrying
logical axis names until unboxed). RL trains only the transformer; the
tokenizer is frozen.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from varrl_jax.models import resize
from varrl_jax.models import tokenizer as tok_lib
from varrl_jax.models import transformer as tr_lib
from varrl_jax.models.schedule import ScaleSchedule


@dataclasses.dataclass(frozen=True, eq=False)
class VarModel:
  """Static description of the model (modules + schedule); holds no weights."""

  tokenizer: tok_lib.MultiScaleVQVAE
  transformer: tr_lib.NextScaleTransformer
  cfg: tr_lib.TransformerConfig

  @property
  def schedule(self) -> ScaleSchedule:
    return self.cfg.schedule

  def init(self, key: jax.Array, boxed: bool = False) -> dict:
    """Random parameters; ``boxed`` keeps the logical-axis metadata."""
    params = jax.jit(self.init_boxed)(key)
    return params if boxed else nn.unbox(params)

  def init_boxed(self, key: jax.Array, parts=('tokenizer', 'transformer')) -> dict:
    """Pure init (jit/eval_shape-able); leaves are logical-axis boxes.

    ``parts`` picks which of the two to build; each part's values do not
    depend on which others are built.
    """
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

  def init_part(self, key: jax.Array, part: str) -> dict:
    """Random unboxed params of one part; equal to ``init(key)[part]``."""
    fn = jax.jit(lambda k: self.init_boxed(k, parts=(part,))[part])
    return nn.unbox(fn(key))

  # -- tokenizer helpers shared by the sampler and the teacher-forced pass ---

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

  def teacher_inputs(self, params: dict, tokens_bl: jnp.ndarray, num_scales=None):
    """Next-scale inputs of every token, [B, L_p, C], from the token ids.

    Scale 0 has no f_hat yet: its slots are zeros (the transformer replaces
    them with its start vector). Accumulates f_hat in the sampler's order so
    both paths compute the same numbers.
    """
    sched = self.schedule
    num_scales = sched.num_scales if num_scales is None else num_scales
    b = tokens_bl.shape[0]
    pieces = [jnp.zeros((b, int(sched.counts[0]), self.cfg.latent_dim), jnp.float32)]
    f_hat = jnp.zeros((b, *sched.latent_size, self.cfg.latent_dim), jnp.float32)
    for s in range(num_scales - 1):
      f_hat = f_hat + self.scale_residual(params, self.scale_ids(tokens_bl, s), s)
      pieces.append(self.next_input(f_hat, s + 1))
    return jnp.concatenate(pieces, axis=1)

  def scale_ids(self, tokens_bl: jnp.ndarray, s: int) -> jnp.ndarray:
    """The ids of scale s as a grid, [B, h_s, w_s]."""
    start, end = self.schedule.span(s)
    return tokens_bl[:, start:end].reshape(tokens_bl.shape[0], *self.schedule.grids[s])

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
    check_images(images_u8, self.schedule.image_size)
    x = jnp.asarray(images_u8, jnp.float32) / 255.0
    ids = self.tokenizer.apply(
      params['tokenizer'], x, method=tok_lib.MultiScaleVQVAE.encode_to_scales
    )
    return jnp.concatenate([r.reshape(r.shape[0], -1) for r in ids], axis=1)


def check_images(images, image_size: tuple[int, int]) -> None:
  """Raises ValueError naming the expected shape for a wrong-size image batch."""
  shape = tuple(np.shape(images))
  if len(shape) != 4 or shape[1:] != (*image_size, 3):
    raise ValueError(
      f'images have shape {shape}; expected [B, {image_size[0]}, {image_size[1]}, 3] '
      f'(config.image_size={tuple(image_size)})'
    )


def build_model(config: ml_collections.ConfigDict) -> VarModel:
  """Validates the config's model fields and builds the modules."""
  cfg = tr_lib.transformer_config(config)
  return VarModel(
    tokenizer=tok_lib.build_tokenizer(config),
    transformer=tr_lib.NextScaleTransformer(cfg),
    cfg=cfg,
  )
