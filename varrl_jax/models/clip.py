"""CLIP (Radford et al. 2021) in Flax: a ViT image tower and a causal text tower.

Both towers are pre-LN transformers of the same block,

  x <- x + Attn(LN_1(x)),   x <- x + W_2 act(W_1 LN_2(x)),

with ``act`` = QuickGELU ``x sigmoid(1.702 x)`` (OpenAI's checkpoints) or the
exact GELU (LAION's open_clip ViT-H-14 of HPS-v2 and PickScore).

- Image: patches p x p (a strided conv without bias) of the [B, S, S, 3]
  normalised pixels give [B, (S/p)^2, w]; a learned class token is
  prepended, learned positions added, then LN_pre, the blocks, LN_post of
  the class token and a projection [w, D]:  ``f_I = LN_post(h_cls) P_I``.
- Text: token + position embeddings of ids [B, 77], causal blocks, LN_final
  and the projection of the end-of-text position:  ``f_T = LN(h_eot) P_T``.
  The end-of-text position is the argmax of the ids (its id is the largest
  in OpenAI's vocabulary; open_clip and Hugging Face configs with
  ``eos_token_id == 2``) or the first position holding ``eos_token_id``.

Padding after the end-of-text token never matters: attention is causal, so
the pooled position sees only the tokens before it.

``cos(f_I, f_T)`` of the L2-normalised features is what CLIPScore and the
preference models score (`varrl_jax.rewards.clip`); ``logit_scale`` is the
learned log temperature (logits = exp(logit_scale) cos).

The layers of a tower are one ``nn.scan`` (parameters stacked on a leading
layer axis), so ViT-H/14's 32 blocks compile once.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

# The normalisation of every OpenAI / LAION CLIP (Hugging Face OPENAI_CLIP_MEAN/STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  """Sizes of a CLIP model. Defaults are OpenAI's ViT-B/32.

  ``*_act``: 'quick_gelu' | 'gelu'. ``text_pool``: 'argmax' (the position of
  the largest id) | 'eos' (the first position of ``eos_token_id``).
  ``dtype``: activations and parameters ('float32' | 'bfloat16'); LayerNorm
  statistics and the softmax are float32 either way.
  """

  embed_dim: int = 512
  image_size: int = 224
  patch_size: int = 32
  vision_width: int = 768
  vision_layers: int = 12
  vision_heads: int = 12
  vision_mlp_dim: int = 3072
  vision_act: str = 'quick_gelu'
  vocab_size: int = 49408
  context_length: int = 77
  text_width: int = 512
  text_layers: int = 12
  text_heads: int = 8
  text_mlp_dim: int = 2048
  text_act: str = 'quick_gelu'
  text_pool: str = 'argmax'
  eos_token_id: int = 49407
  layer_norm_eps: float = 1e-5
  image_mean: tuple[float, float, float] = CLIP_MEAN
  image_std: tuple[float, float, float] = CLIP_STD
  dtype: str = 'float32'

  def __post_init__(self):
    for name in ('vision_act', 'text_act'):
      if getattr(self, name) not in _ACTS:
        raise ValueError(
          f'{name} must be one of {sorted(_ACTS)}, got {getattr(self, name)!r}'
        )
    if self.text_pool not in ('argmax', 'eos'):
      raise ValueError(f"text_pool must be 'argmax' or 'eos', got {self.text_pool!r}")
    if self.image_size % self.patch_size:
      raise ValueError(
        f'image_size {self.image_size} is not a multiple of '
        f'patch_size {self.patch_size}'
      )
    for tower in ('vision', 'text'):
      width, heads = getattr(self, f'{tower}_width'), getattr(self, f'{tower}_heads')
      if width % heads:
        raise ValueError(
          f'{tower}_width {width} is not divisible by {tower}_heads {heads}'
        )

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  def replace(self, **kw) -> ClipConfig:
    return dataclasses.replace(self, **kw)


def _quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


_ACTS = {'quick_gelu': _quick_gelu, 'gelu': lambda x: jax.nn.gelu(x, approximate=False)}


class _Block(nn.Module):
  """One pre-LN block on [B, L, w] (``nn.scan`` body: carry x, no per-step input)."""

  width: int
  heads: int
  mlp_dim: int
  act: str
  eps: float
  causal: bool
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x_blw, _):
    b, length, _ = x_blw.shape
    hd = self.width // self.heads

    def dense(n, name):
      return nn.Dense(n, dtype=self.dtype, param_dtype=self.dtype, name=name)

    def norm(name):
      return nn.LayerNorm(
        self.eps, dtype=jnp.float32, param_dtype=self.dtype, name=name
      )

    h = norm('ln_1')(x_blw).astype(self.dtype)
    q, k, v = (
      dense(self.width, n)(h).reshape(b, length, self.heads, hd) for n in 'qkv'
    )
    logits_bhqk = jnp.einsum('bqhd,bkhd->bhqk', q * hd**-0.5, k).astype(jnp.float32)
    if self.causal:
      keep = np.tril(np.ones((length, length), bool))
      logits_bhqk = jnp.where(keep, logits_bhqk, -jnp.inf)
    probs = jax.nn.softmax(logits_bhqk, axis=-1).astype(self.dtype)
    o = jnp.einsum('bhqk,bkhd->bqhd', probs, v).reshape(b, length, self.width)
    x_blw = x_blw + dense(self.width, 'out')(o)
    h = norm('ln_2')(x_blw).astype(self.dtype)
    h = dense(self.width, 'fc2')(_ACTS[self.act](dense(self.mlp_dim, 'fc1')(h)))
    return x_blw + h, None


def _tower(cfg: ClipConfig, prefix: str, causal: bool, name: str) -> nn.Module:
  layers = getattr(cfg, f'{prefix}_layers')
  stack = nn.scan(
    _Block,
    variable_axes={'params': 0},
    split_rngs={'params': True},
    length=layers,
  )
  return stack(
    width=getattr(cfg, f'{prefix}_width'),
    heads=getattr(cfg, f'{prefix}_heads'),
    mlp_dim=getattr(cfg, f'{prefix}_mlp_dim'),
    act=getattr(cfg, f'{prefix}_act'),
    eps=cfg.layer_norm_eps,
    causal=causal,
    dtype=jnp.dtype(cfg.dtype),
    name=name,
  )


def _normal(std: float):
  return nn.initializers.normal(std)


class VisionTower(nn.Module):
  """Normalised pixels [B, S, S, 3] -> image features f_I [B, D] (unnormalised)."""

  cfg: ClipConfig

  @nn.compact
  def __call__(self, pixels_bhwc):
    cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    w, p = cfg.vision_width, cfg.patch_size
    x = nn.Conv(
      w,
      (p, p),
      (p, p),
      'VALID',
      use_bias=False,
      dtype=dtype,
      param_dtype=dtype,
      name='patch_embed',
    )(pixels_bhwc.astype(dtype))
    b = x.shape[0]
    x = x.reshape(b, -1, w)  # row-major patches, as torch's flatten(2)
    cls = self.param('class_embedding', _normal(w**-0.5), (w,), dtype)
    pos = self.param('position_embedding', _normal(0.01), (cfg.grid**2 + 1, w), dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, w)).astype(x.dtype), x], 1) + pos

    def ln(name):
      return nn.LayerNorm(
        cfg.layer_norm_eps, dtype=jnp.float32, param_dtype=dtype, name=name
      )

    x = ln('ln_pre')(x).astype(dtype)
    x, _ = _tower(cfg, 'vision', False, 'blocks')(x, None)
    pooled = ln('ln_post')(x[:, 0])
    proj = self.param('projection', _normal(w**-0.5), (w, cfg.embed_dim), dtype)
    return pooled.astype(dtype) @ proj


class TextTower(nn.Module):
  """Token ids int32 [B, context_length] -> text features f_T [B, D]."""

  cfg: ClipConfig

  @nn.compact
  def __call__(self, ids_bl):
    cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    w = cfg.text_width
    x = nn.Embed(
      cfg.vocab_size,
      w,
      embedding_init=_normal(0.02),
      dtype=dtype,
      param_dtype=dtype,
      name='token_embedding',
    )(ids_bl)
    pos = self.param(
      'position_embedding', _normal(0.01), (cfg.context_length, w), dtype
    )
    x = x + pos[: ids_bl.shape[1]]
    x, _ = _tower(cfg, 'text', True, 'blocks')(x, None)
    x = nn.LayerNorm(
      cfg.layer_norm_eps, dtype=jnp.float32, param_dtype=dtype, name='ln_final'
    )(x)
    if cfg.text_pool == 'argmax':
      eot = jnp.argmax(ids_bl, axis=-1)  # first maximum, as torch
    else:
      eot = jnp.argmax(ids_bl == cfg.eos_token_id, axis=-1)
    pooled = jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]
    proj = self.param('projection', _normal(w**-0.5), (w, cfg.embed_dim), dtype)
    return pooled.astype(dtype) @ proj


class ClipModel(nn.Module):
  """Both towers and the log temperature. ``__call__`` (used by ``init``) returns
  ``(f_I [B, D], f_T [B', D])``; `encode_image` / `encode_text` one tower each."""

  cfg: ClipConfig

  def setup(self):
    self.vision = VisionTower(self.cfg)
    self.text = TextTower(self.cfg)
    self.logit_scale = self.param(
      'logit_scale', nn.initializers.constant(np.log(1 / 0.07)), (), jnp.float32
    )

  def encode_image(self, pixels_bhwc):
    return self.vision(pixels_bhwc)

  def encode_text(self, ids_bl):
    return self.text(ids_bl)

  def __call__(self, pixels_bhwc, ids_bl):
    return self.encode_image(pixels_bhwc), self.encode_text(ids_bl)


def normalize(f_bd: jnp.ndarray) -> jnp.ndarray:
  """L2-normalised rows, in float32."""
  f_bd = f_bd.astype(jnp.float32)
  return f_bd / jnp.linalg.norm(f_bd, axis=-1, keepdims=True)


def init_shapes(cfg: ClipConfig) -> dict:
  """The parameter tree of ``cfg`` as ShapeDtypeStructs (no memory used)."""
  pixels = jnp.zeros((1, cfg.image_size, cfg.image_size, 3), jnp.float32)
  ids = jnp.zeros((1, cfg.context_length), jnp.int32)
  return jax.eval_shape(ClipModel(cfg).init, jax.random.key(0), pixels, ids)['params']
