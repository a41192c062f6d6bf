"""Loads CLIP weights from local files into `varrl_jax.models.clip` parameters.

Two layouts, both read with the torch-free reader (`convert.torch_io`):

- Hugging Face ``CLIPModel`` folder (OpenAI CLIP-B/L, PickScore, LAION
  CLIP-H): ``config.json``, weights in ``model.safetensors``,
  ``pytorch_model.bin`` or a sharded ``*.index.json``, and the tokenizer
  files ``vocab.json`` + ``merges.txt`` (or another tokenizer path).
- open_clip checkpoint file (e.g. HPS-v2's ``HPS_v2_compressed.pt``): a state
  dict (possibly under ``state_dict`` and/or ``module.``), an architecture and
  a tokenizer; see `varrl_jax.models.clip_open_clip`.

Mapping is strict: every parameter must come from its key with the expected
shape, and any key left over (other than known non-weight buffers) is an
error. Every error is one `ClipWeightsError` line naming the file and key.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
from flax import traverse_util

from varrl_jax.convert import torch_io
from varrl_jax.models import clip as clip_lib
from varrl_jax.models.clip_tokenizer import ClipTokenizer, TokenizerFileError


class ClipWeightsError(ValueError):
  """A missing file, missing or unexpected key, or a wrong shape; one line."""


_HF_BUFFERS = (
  'text_model.embeddings.position_ids',
  'vision_model.embeddings.position_ids',
)


@dataclasses.dataclass
class LoadedClip:
  """A CLIP model ready to run: config, float32 numpy parameters, tokenizer."""

  config: clip_lib.ClipConfig
  params: dict
  tokenizer: ClipTokenizer
  source: str  # what was loaded, for logs


def load(
  path: str, format: str = 'auto', arch: str = '', tokenizer: str = ''
) -> LoadedClip:
  """Loads ``path``: a Hugging Face folder ('hf') or an open_clip file ('open_clip');
  'auto' = folder -> 'hf', file -> 'open_clip'."""
  if not path:
    raise ClipWeightsError('no CLIP path given')
  if not os.path.exists(path):
    raise ClipWeightsError(f'{path}: no such file or directory')
  if format == 'auto':
    format = 'hf' if os.path.isdir(path) else 'open_clip'
  if format == 'hf':
    return load_hf(path, tokenizer)
  if format == 'open_clip':
    from varrl_jax.models import clip_open_clip

    return clip_open_clip.load_open_clip(path, arch, tokenizer)
  raise ClipWeightsError(f"format must be 'auto', 'hf' or 'open_clip', got {format!r}")


# -- Hugging Face ---------------------------------------------------------------


def hf_config(config: dict, where: str = 'config.json') -> clip_lib.ClipConfig:
  """`ClipConfig` of a ``CLIPModel`` config.json (Hugging Face defaults for
  keys it leaves out)."""
  # Old configs (transformers < 4.26) may hold the towers in *_config_dict.
  t = config.get('text_config') or config.get('text_config_dict')
  v = config.get('vision_config') or config.get('vision_config_dict')
  if t is None or v is None:
    raise ClipWeightsError(
      f'{where}: not a CLIPModel config (no text_config / vision_config)'
    )
  eos = t.get('eos_token_id', 49407)
  return clip_lib.ClipConfig(
    embed_dim=config.get('projection_dim', 512),
    image_size=v.get('image_size', 224),
    patch_size=v.get('patch_size', 32),
    vision_width=v.get('hidden_size', 768),
    vision_layers=v.get('num_hidden_layers', 12),
    vision_heads=v.get('num_attention_heads', 12),
    vision_mlp_dim=v.get('intermediate_size', 3072),
    vision_act=v.get('hidden_act', 'quick_gelu'),
    vocab_size=t.get('vocab_size', 49408),
    context_length=t.get('max_position_embeddings', 77),
    text_width=t.get('hidden_size', 512),
    text_layers=t.get('num_hidden_layers', 12),
    text_heads=t.get('num_attention_heads', 8),
    text_mlp_dim=t.get('intermediate_size', 2048),
    text_act=t.get('hidden_act', 'quick_gelu'),
    # Hugging Face pools the argmax id for the legacy eos_token_id 2.
    text_pool='argmax' if eos == 2 else 'eos',
    eos_token_id=eos,
    layer_norm_eps=v.get('layer_norm_eps', 1e-5),
  )


def _hf_weights_file(folder: str) -> str:
  for name in (
    'model.safetensors',
    'model.safetensors.index.json',
    'pytorch_model.bin',
    'pytorch_model.bin.index.json',
  ):
    if os.path.isfile(os.path.join(folder, name)):
      return os.path.join(folder, name)
  raise ClipWeightsError(
    f'{folder}: no weights (model.safetensors, pytorch_model.bin or a *.index.json)'
  )


def load_hf(folder: str, tokenizer: str = '') -> LoadedClip:
  """A Hugging Face ``CLIPModel`` folder (see the module docstring)."""
  config_path = os.path.join(folder, 'config.json')
  if not os.path.isfile(config_path):
    raise ClipWeightsError(f'{config_path}: no such file')
  try:
    with open(config_path, encoding='utf-8') as f:
      raw = json.load(f)
  except ValueError as e:
    raise ClipWeightsError(f'{config_path}: not JSON ({e})') from None
  try:
    cfg = hf_config(raw, config_path)
  except (TypeError, ValueError) as e:
    raise ClipWeightsError(f'{config_path}: {e}') from None
  pre = os.path.join(folder, 'preprocessor_config.json')
  if os.path.isfile(pre):
    with open(pre, encoding='utf-8') as f:
      p = json.load(f)
    cfg = cfg.replace(
      image_mean=tuple(p.get('image_mean', cfg.image_mean)),
      image_std=tuple(p.get('image_std', cfg.image_std)),
    )
  weights = _hf_weights_file(folder)
  params = params_from_hf(_read(weights), cfg, weights)
  tok = _tokenizer(tokenizer or folder, cfg.context_length)
  return LoadedClip(cfg, params, tok, f'hf:{folder}')


def _read(path: str) -> dict[str, np.ndarray]:
  try:
    return torch_io.load_state_dict(path)
  except torch_io.CheckpointFileError as e:
    raise ClipWeightsError(str(e)) from None


def _tokenizer(path: str, context_length: int) -> ClipTokenizer:
  try:
    return ClipTokenizer.from_path(path, context_length)
  except TokenizerFileError as e:
    raise ClipWeightsError(str(e)) from None


class _Reader:
  """Takes tensors out of a state dict by key, remembering which were used."""

  def __init__(self, state: dict[str, np.ndarray], path: str):
    self.state, self.path, self.used = state, path, set()

  def __call__(self, key: str) -> np.ndarray:
    if key not in self.state:
      raise ClipWeightsError(f'{self.path}: missing key {key!r}')
    self.used.add(key)
    return np.asarray(self.state[key], np.float32)

  def dense(self, prefix: str) -> dict:
    return {'kernel': self(prefix + '.weight').T, 'bias': self(prefix + '.bias')}

  def norm(self, prefix: str) -> dict:
    return {'scale': self(prefix + '.weight'), 'bias': self(prefix + '.bias')}

  def finish(self, buffers: tuple[str, ...]) -> None:
    extra = sorted(k for k in set(self.state) - self.used if k not in buffers)
    if extra:
      more = f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''
      raise ClipWeightsError(
        f'{self.path}: unexpected key {extra[0]!r}{more}: not this architecture'
      )


def _stack(layers: list[dict]) -> dict:
  return jax.tree.map(lambda *xs: np.stack(xs), *layers)


def _hf_block(r: _Reader, p: str) -> dict:
  a = p + '.self_attn.'
  return {
    'ln_1': r.norm(p + '.layer_norm1'),
    'q': r.dense(a + 'q_proj'),
    'k': r.dense(a + 'k_proj'),
    'v': r.dense(a + 'v_proj'),
    'out': r.dense(a + 'out_proj'),
    'ln_2': r.norm(p + '.layer_norm2'),
    'fc1': r.dense(p + '.mlp.fc1'),
    'fc2': r.dense(p + '.mlp.fc2'),
  }


def params_from_hf(state: dict, cfg: clip_lib.ClipConfig, path: str) -> dict:
  """Our parameter tree from a ``CLIPModel`` state dict (strict, shape-checked)."""
  r = _Reader(state, path)
  vm, tm = 'vision_model.', 'text_model.'
  params = {
    'vision': {
      'patch_embed': {
        'kernel': r(vm + 'embeddings.patch_embedding.weight').transpose(2, 3, 1, 0)
      },
      'class_embedding': r(vm + 'embeddings.class_embedding'),
      'position_embedding': r(vm + 'embeddings.position_embedding.weight'),
      'ln_pre': r.norm(vm + 'pre_layrnorm'),
      'blocks': _stack(
        [_hf_block(r, f'{vm}encoder.layers.{i}') for i in range(cfg.vision_layers)]
      ),
      'ln_post': r.norm(vm + 'post_layernorm'),
      'projection': r('visual_projection.weight').T,
    },
    'text': {
      'token_embedding': {'embedding': r(tm + 'embeddings.token_embedding.weight')},
      'position_embedding': r(tm + 'embeddings.position_embedding.weight'),
      'blocks': _stack(
        [_hf_block(r, f'{tm}encoder.layers.{i}') for i in range(cfg.text_layers)]
      ),
      'ln_final': r.norm(tm + 'final_layer_norm'),
      'projection': r('text_projection.weight').T,
    },
    'logit_scale': r('logit_scale').reshape(()),
  }
  r.finish(_HF_BUFFERS)
  _check_shapes(params, cfg, path)
  return params


def _check_shapes(params: dict, cfg: clip_lib.ClipConfig, path: str) -> None:
  want = traverse_util.flatten_dict(clip_lib.init_shapes(cfg), sep='/')
  have = traverse_util.flatten_dict(params, sep='/')
  for k, spec in want.items():
    if k not in have:
      raise ClipWeightsError(f'{path}: no weights for parameter {k}')
    if tuple(have[k].shape) != tuple(spec.shape):
      raise ClipWeightsError(
        f'{path}: parameter {k} has shape {tuple(have[k].shape)}, the config '
        f'needs {tuple(spec.shape)}'
      )
