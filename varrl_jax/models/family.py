"""The model-family interface: what the method needs from a next-scale model.

The sampler, the teacher-forced log-probs, the GRPO step, the evaluator,
export and AOT see a model only through `NextScaleModel`, and
`build_model` is the one place that maps ``config.model.family`` to a
family. A family supplies:

- the scale schedule (`schedule`), the latent width and the vocabulary;
- conditioning: prompts (strings) -> a *cond* pytree of host arrays whose
  leaves all lead with the batch axis (`encode_prompts`), the null
  conditioning of classifier-free guidance (`null_cond`), and its abstract
  shapes (`cond_spec`, for AOT);
- the transformer: teacher-forced logits of every scale (`logits`), and
  KV-cached sampling: `init_cache`, `prefill` (cond -> per-row context +
  cache) and `step` (one scale against the cache);
- the tokenizer: sampled ids of a scale -> its residual at the latent size
  (`scale_residual`), the accumulated f_hat -> the next scale's input
  (`next_input`), f_hat -> uint8 image (`decode_fhat`), images -> ids
  (`encode_images`);
- the token distribution (`dist`): log-probs, entropy and drawing.

Parameters are one pytree ``{'tokenizer': ..., 'transformer': ...}``; RL
trains only the transformer. Everything else (`teacher_inputs`,
`decode_tokens`, `init`) is written once here in terms of the above.

Families: ``varrl`` (our text-prefix model, `models/varrl.py`), ``var``
(FoundationVision/VAR, class-conditional, `models/var_official/`) and
``infinity`` (FoundationVision/Infinity, Flan-T5 text, bitwise tokens,
`models/infinity/`).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from varrl_jax.models import distributions
from varrl_jax.models.schedule import ScaleSchedule
from varrl_jax.models.text import PromptError  # noqa: F401  (the families raise it)

Cond = dict[str, Any]  # leaves [B, ...]; host numpy or device arrays

FAMILIES = ('varrl', 'var', 'infinity')


@dataclasses.dataclass(frozen=True)
class TransformerDims:
  """What a FLOP count needs of a family's transformer (`varrl_jax.aot`)."""

  schedule: ScaleSchedule
  prefix_len: int  # conditioning positions before the image tokens
  num_layers: int
  d_model: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  mlp_mats: int  # 3 for a gated MLP (SwiGLU), 2 for a plain one
  vocab_size: int
  remat: str
  # Text tokens every image token cross-attends to (Infinity); 0 = none.
  cross_len: int = 0

  def segments(self, start: int, length: int) -> np.ndarray:
    """Segment ids of positions [start, start + length): 0 for the prefix,
    s + 1 for image scale s (block-causal: a query sees segments <= its own)."""
    seg = np.concatenate(
      [np.zeros(self.prefix_len, np.int32), self.schedule.scale_index + 1]
    )
    return seg[start : start + length]


class NextScaleModel(abc.ABC):
  """Static description of a model (modules + schedule); holds no weights."""

  family: str
  example_prompts: tuple[str, ...] = ()  # what `varrl_jax.sample` draws by default
  dist: distributions.Categorical = distributions.Categorical()
  # True where `with_null` appends the same null row whatever the prompt and
  # `prefill` does work per row: the CFG sampler then prefills one null row
  # and repeats its cache (`sampling.Sampler`).
  shared_null_prefill: bool = False

  # -- static facts -----------------------------------------------------------

  # Every family's static config (``self.cfg``, hashable) carries these three.
  @property
  def schedule(self) -> ScaleSchedule:
    return self.cfg.schedule

  @property
  def latent_dim(self) -> int:
    return self.cfg.latent_dim

  @property
  def vocab_size(self) -> int:
    return self.cfg.vocab_size

  @property
  def input_dim(self) -> int:
    """Width of a next-scale input token (`next_input`); the latent width
    unless a family packs several latent cells into one token."""
    return self.latent_dim

  @property
  @abc.abstractmethod
  def dims(self) -> TransformerDims: ...

  # -- conditioning (host) ----------------------------------------------------

  @abc.abstractmethod
  def encode_prompts(self, prompts: Sequence[str]) -> Cond:
    """Prompts -> cond pytree of numpy arrays [B, ...]; raises PromptError."""

  @abc.abstractmethod
  def null_cond(self, batch: int) -> Cond:
    """The unconditional (CFG) conditioning of ``batch`` rows."""

  def truncate_prompt(self, prompt: str) -> str:
    """The longest part of ``prompt`` this family can condition on."""
    return prompt

  def check_prompts(self, prompts: Sequence[str]) -> None:
    """Raises PromptError for the first prompt this family cannot condition
    on (host only; by default by encoding them in chunks)."""
    for i in range(0, len(prompts), 1024):
      self.encode_prompts(list(prompts[i : i + 1024]))

  def cond_spec(self, batch: int) -> Cond:
    """Abstract shapes of a cond batch (ShapeDtypeStructs), for AOT."""
    one = self.null_cond(1)
    return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((batch, *x.shape[1:]), x.dtype), one
    )

  def with_null(self, cond: Cond) -> Cond:
    """[cond; null] stacked on the batch axis: 2B rows."""
    b = jax.tree.leaves(cond)[0].shape[0]
    null = self.null_cond(b)
    return jax.tree.map(
      lambda c, n: jnp.concatenate([c, jnp.asarray(n)], 0), cond, null
    )

  # -- parameters -------------------------------------------------------------

  @abc.abstractmethod
  def init_boxed(self, key: jax.Array, parts=('tokenizer', 'transformer')) -> dict:
    """Pure init (jit/eval_shape-able); leaves keep their logical-axis boxes.

    ``parts`` picks which of the two to build; each part's values do not
    depend on which others are built.
    """

  def init(self, key: jax.Array, boxed: bool = False) -> dict:
    """Random parameters; ``boxed`` keeps the logical-axis metadata."""
    params = jax.jit(self.init_boxed)(key)
    return params if boxed else nn.unbox(params)

  def init_part(self, key: jax.Array, part: str) -> dict:
    """Random unboxed params of one part; equal to ``init(key)[part]``."""
    fn = jax.jit(lambda k: self.init_boxed(k, parts=(part,))[part])
    return nn.unbox(fn(key))

  # -- transformer ------------------------------------------------------------

  @abc.abstractmethod
  def logits(self, transformer_params, cond: Cond, inputs_blc, num_scales=None):
    """Teacher-forced logits [B, L_p, ...] of the first ``num_scales`` scales.

    ``inputs_blc`` [B, L_p, C] are `teacher_inputs` (scale 0's slots ignored).
    """

  @abc.abstractmethod
  def init_cache(self, batch: int, dtype=None):
    """An empty KV cache: a pytree of [layers, B, ...] arrays."""

  @abc.abstractmethod
  def prefill(self, transformer_params, cond: Cond, cache):
    """(ctx, cache): what `step` needs per row (leaves [B, ...]) and the cache
    after the conditioning prefix (if the family has one)."""

  @abc.abstractmethod
  def step(self, transformer_params, inputs_bnc, s: int, ctx, cache):
    """(logits [B, n_s, ...], cache) of scale s from its inputs."""

  # -- tokenizer --------------------------------------------------------------

  @abc.abstractmethod
  def scale_residual(self, params: dict, ids_bhw, s: int):
    """The residual of scale s at the latent size, [B, h, w, C]."""

  @abc.abstractmethod
  def next_input(self, f_hat, s: int):
    """Input of scale s from f_hat (scales < s), [B, n_s, C]."""

  @abc.abstractmethod
  def decode_fhat(self, params: dict, f_hat):
    """f_hat [B, h, w, C] -> uint8 images [B, H, W, 3]."""

  @abc.abstractmethod
  def encode_images(self, params: dict, images_u8):
    """uint8 [B, H, W, 3] -> tokens [B, L, *dist.token_shape] (residual
    quantization)."""

  # -- written once -----------------------------------------------------------

  def zero_fhat(self, batch: int):
    return jnp.zeros((batch, *self.schedule.latent_size, self.latent_dim), jnp.float32)

  def scale_ids(self, tokens_bl, s: int):
    """The tokens of scale s as a grid, [B, h_s, w_s, *dist.token_shape]."""
    start, end = self.schedule.span(s)
    return tokens_bl[:, start:end].reshape(
      tokens_bl.shape[0], *self.schedule.grids[s], *self.dist.token_shape
    )

  def empty_tokens(self, batch: int):
    """Zero tokens [B, L, *dist.token_shape] of the token dtype."""
    shape = (batch, self.schedule.num_tokens, *self.dist.token_shape)
    return jnp.zeros(shape, self.dist.token_dtype)

  def teacher_inputs(self, params: dict, tokens_bl, num_scales=None):
    """Next-scale inputs of every token, [B, L_p, input_dim], from the tokens.

    Scale 0 has no f_hat yet: its slots are zeros (the transformer replaces
    them with its start input). Accumulates f_hat in the sampler's order so
    both paths compute the same numbers.
    """
    sched = self.schedule
    num_scales = sched.num_scales if num_scales is None else num_scales
    b = tokens_bl.shape[0]
    pieces = [jnp.zeros((b, int(sched.counts[0]), self.input_dim), jnp.float32)]
    f_hat = self.zero_fhat(b)
    for s in range(num_scales - 1):
      f_hat = f_hat + self.scale_residual(params, self.scale_ids(tokens_bl, s), s)
      pieces.append(self.next_input(f_hat, s + 1))
    return jnp.concatenate(pieces, axis=1)

  def fhat_from_tokens(self, params: dict, tokens_bl):
    f_hat = self.zero_fhat(tokens_bl.shape[0])
    for s in range(self.schedule.num_scales):
      f_hat = f_hat + self.scale_residual(params, self.scale_ids(tokens_bl, s), s)
    return f_hat

  def decode_tokens(self, params: dict, tokens_bl):
    """Token ids [B, L] -> uint8 images [B, H, W, 3]."""
    return self.decode_fhat(params, self.fhat_from_tokens(params, tokens_bl))


def check_images(images, image_size: tuple[int, int]) -> None:
  """Raises ValueError naming the expected shape for a wrong-size image batch."""
  shape = tuple(np.shape(images))
  if len(shape) != 4 or shape[1:] != (*image_size, 3):
    raise ValueError(
      f'images have shape {shape}; expected [B, {image_size[0]}, {image_size[1]}, 3] '
      f'(config.image_size={tuple(image_size)})'
    )


def check_modes(model_config: ml_collections.ConfigDict) -> None:
  """``config.model.remat`` and ``.attention`` are ones every family has."""
  mc = model_config
  if mc.attention not in ('plain', 'splash'):
    raise ValueError(
      f"config.model.attention must be 'plain' or 'splash', got {mc.attention!r}"
    )
  if mc.remat not in ('none', 'full', 'dots'):
    raise ValueError(
      f"config.model.remat must be 'none', 'full' or 'dots', got {mc.remat!r}"
    )


def vae_channels(tc: ml_collections.ConfigDict) -> tuple[int, tuple[int, ...]]:
  """(ch, ch_mult) of an official VAE from ``config.tokenizer.channels``
  (ch x ch_mult, one level per halving of ``downsample``)."""
  channels = tuple(int(c) for c in tc.channels)
  ch = channels[0]
  if any(c % ch for c in channels):
    raise ValueError(
      f'config.tokenizer.channels={channels}: every level must be a multiple of '
      'the first (their ch x ch_mult)'
    )
  if 2 ** (len(channels) - 1) != tc.downsample:
    raise ValueError(
      f'config.tokenizer.channels has {len(channels)} levels, which downsample by '
      f'{2 ** (len(channels) - 1)}, but config.tokenizer.downsample={tc.downsample}'
    )
  return ch, tuple(c // ch for c in channels)


def sample_scan_unroll(config: ml_collections.ConfigDict, num_layers: int) -> int:
  """Layers per scan iteration in the sampler's steps: ``model.sample_scan_unroll``,
  where 0 means ``model.scan_unroll`` and -1 every layer."""
  unroll = int(config.model.sample_scan_unroll)
  if unroll < -1:
    raise ValueError(f'config.model.sample_scan_unroll must be >= -1, got {unroll}')
  return {0: int(config.model.scan_unroll), -1: num_layers}.get(unroll, unroll)


def build_model(config: ml_collections.ConfigDict) -> NextScaleModel:
  """The one place that maps ``config.model.family`` to its modules."""
  family = config.model.family
  if family == 'varrl':
    from varrl_jax.models import varrl

    return varrl.build(config)
  if family == 'var':
    from varrl_jax.models.var_official import family as var_family

    return var_family.build(config)
  if family == 'infinity':
    from varrl_jax.models.infinity import family as infinity_family

    return infinity_family.build(config)
  raise ValueError(f'config.model.family={family!r}; expected one of {FAMILIES}')
