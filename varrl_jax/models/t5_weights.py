"""A local Hugging Face T5 folder -> (`T5Config`, our encoder parameters).

The folder is what ``save_pretrained`` writes (e.g. ``google/flan-t5-xl``):
``config.json`` and one of ``model.safetensors``,
``model.safetensors.index.json`` (shards), ``pytorch_model.bin`` or
``pytorch_model.bin.index.json``, read without torch
(`varrl_jax.convert.torch_io`). A full ``T5ForConditionalGeneration``
checkpoint is fine: its ``decoder.*`` and ``lm_head.*`` keys are ignored.
Every other key must be one of ours, with its shape.

| theirs (``i`` = block) | ours | transform |
|---|---|---|
| ``shared.weight`` (or ``encoder.embed_tokens.weight``) [V, D] | ``token_embed`` | |
| ``encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight`` [NB, H] | ``relative_attention_bias`` | |
| ``encoder.block.i.layer.0.layer_norm.weight`` [D] | ``block_i.attn_norm.scale`` | |
| ``encoder.block.i.layer.0.SelfAttention.{q,k,v}.weight`` [H·dk, D] | ``block_i.attn.{q,k,v}.kernel`` [D, H, dk] | W^T |
| ``encoder.block.i.layer.0.SelfAttention.o.weight`` [D, H·dk] | ``block_i.attn.o.kernel`` [H, dk, D] | W^T |
| ``encoder.block.i.layer.1.layer_norm.weight`` [D] | ``block_i.mlp_norm.scale`` | |
| ``encoder.block.i.layer.1.DenseReluDense.{wi_0,wi_1,wi}.weight`` [F, D] | ``block_i.mlp.*.kernel`` [D, F] | W^T |
| ``encoder.block.i.layer.1.DenseReluDense.wo.weight`` [D, F] | ``block_i.mlp.wo.kernel`` [F, D] | W^T |
| ``encoder.final_layer_norm.weight`` [D] | ``final_norm.scale`` | |

Errors are one line naming the folder or file and the key
(`ConversionError`, `varrl_jax.convert.torch_io.CheckpointFileError`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from varrl_jax.convert import torch_io
from varrl_jax.models.t5 import T5Config
from varrl_jax.models.var_official.errors import ConversionError

# In the order transformers' from_pretrained looks for them.
WEIGHT_FILES = (
  'model.safetensors',
  'model.safetensors.index.json',
  'pytorch_model.bin',
  'pytorch_model.bin.index.json',
)
_IGNORED_PREFIXES = ('decoder.', 'lm_head.')
_EMBED_KEYS = ('shared.weight', 'encoder.embed_tokens.weight')
_ATTN = 'encoder.block.{i}.layer.0.SelfAttention.'
_FF = 'encoder.block.{i}.layer.1.DenseReluDense.'
_REL_BIAS = 'encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight'

# config.json fields (transformers' T5Config names) and their defaults there.
_INT_FIELDS = {
  'vocab_size': 32128,
  'd_model': 512,
  'd_kv': 64,
  'd_ff': 2048,
  'num_layers': 6,
  'num_heads': 8,
  'relative_attention_num_buckets': 32,
  'relative_attention_max_distance': 128,
}


def config_from_dict(
  d: dict, source: str = 'config.json', **overrides: Any
) -> T5Config:
  """`T5Config` from a transformers ``config.json`` dict (missing fields take
  transformers' defaults); ``overrides`` set e.g. ``dtype``."""
  model_type = d.get('model_type', 't5')
  if model_type not in ('t5', 'mt5'):
    raise ConversionError(source, 'model_type', f'{model_type!r} is not a T5 encoder')
  kwargs: dict[str, Any] = {}
  for name, default in _INT_FIELDS.items():
    value = d.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ConversionError(source, name, f'{value!r} is not a positive integer')
    kwargs[name] = value
  eps = d.get('layer_norm_epsilon', 1e-6)
  if not isinstance(eps, (int, float)) or eps <= 0:
    raise ConversionError(source, 'layer_norm_epsilon', f'{eps!r} is not > 0')
  kwargs['layer_norm_epsilon'] = float(eps)
  kwargs['feed_forward_proj'] = d.get('feed_forward_proj', 'relu')
  kwargs.update(overrides)
  try:
    return T5Config(**kwargs)
  except ValueError as e:
    raise ConversionError(source, 'feed_forward_proj', str(e)) from None


def read_config(folder: str | os.PathLike, **overrides: Any) -> T5Config:
  """`T5Config` of ``<folder>/config.json``."""
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise ConversionError(folder, 'folder', 'no such directory')
  path = os.path.join(folder, 'config.json')
  if not os.path.isfile(path):
    raise ConversionError(
      folder, 'config.json', 'no such file (expected a Hugging Face T5 folder)'
    )
  try:
    with open(path, encoding='utf-8') as f:
      d = json.load(f)
  except ValueError as e:
    raise ConversionError(path, 'config.json', f'not JSON ({e})') from None
  if not isinstance(d, dict):
    raise ConversionError(path, 'config.json', 'not a JSON object')
  return config_from_dict(d, path, **overrides)


def weights_path(folder: str | os.PathLike) -> str:
  """The first of `WEIGHT_FILES` present in ``folder``."""
  folder = os.fspath(folder)
  for name in WEIGHT_FILES:
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      return path
  raise ConversionError(folder, 'weights', f'none of {", ".join(WEIGHT_FILES)}')


def expected_state_shapes(cfg: T5Config) -> dict[str, tuple[int, ...]]:
  """{their key: shape} of every encoder parameter (embedding as
  ``shared.weight``)."""
  d, f, hk = cfg.d_model, cfg.d_ff, cfg.num_heads * cfg.d_kv
  shapes = {
    'shared.weight': (cfg.vocab_size, d),
    _REL_BIAS: (cfg.relative_attention_num_buckets, cfg.num_heads),
    'encoder.final_layer_norm.weight': (d,),
  }
  wi = ('wi_0', 'wi_1') if cfg.gated else ('wi',)
  for i in range(cfg.num_layers):
    attn, ff = _ATTN.format(i=i), _FF.format(i=i)
    shapes[f'encoder.block.{i}.layer.0.layer_norm.weight'] = (d,)
    shapes[f'encoder.block.{i}.layer.1.layer_norm.weight'] = (d,)
    for name in 'qkv':
      shapes[f'{attn}{name}.weight'] = (hk, d)
    shapes[f'{attn}o.weight'] = (d, hk)
    for name in wi:
      shapes[f'{ff}{name}.weight'] = (f, d)
    shapes[f'{ff}wo.weight'] = (d, f)
  return shapes


def _encoder_state(sd: dict, cfg: T5Config, source: str) -> dict[str, np.ndarray]:
  """The encoder keys of ``sd``, embedding under ``shared.weight``; strict."""
  sd = {k: v for k, v in sd.items() if not k.startswith(_IGNORED_PREFIXES)}
  embeds = [k for k in _EMBED_KEYS if k in sd]
  if not embeds:
    raise ConversionError(source, 'shared.weight', 'missing from the state_dict')
  # A tied checkpoint may hold the table under both names: one copy is used,
  # the other only has to have the same shape.
  table = sd.pop(embeds[0])
  for key in embeds[1:]:
    if np.shape(sd[key]) != np.shape(table):
      raise ConversionError(
        source, key, f'shape {np.shape(sd[key])}, but {embeds[0]} is {np.shape(table)}'
      )
    del sd[key]
  sd['shared.weight'] = table

  expected = expected_state_shapes(cfg)
  missing = [k for k in expected if k not in sd]
  if missing:
    more = f' ({len(missing)} keys missing in all)' if len(missing) > 1 else ''
    raise ConversionError(source, missing[0], f'missing from the state_dict{more}')
  unexpected = sorted(set(sd) - set(expected))
  if unexpected:
    more = f' ({len(unexpected)} unexpected in all)' if len(unexpected) > 1 else ''
    raise ConversionError(
      source, unexpected[0], f'not a parameter of this T5 encoder{more}'
    )
  for key, shape in expected.items():
    got = tuple(np.shape(sd[key]))
    if got != shape:
      raise ConversionError(source, key, f'shape {got}, expected {shape}')
  return sd


def params_from_state_dict(
  sd: dict[str, np.ndarray], cfg: T5Config, source: str = 'state_dict'
) -> dict:
  """Our parameter tree (numpy, ``cfg.param_dtype``) from their state dict."""
  sd = _encoder_state(sd, cfg, source)
  dtype = jnp.dtype(cfg.param_dtype)
  h, dk, d = cfg.num_heads, cfg.d_kv, cfg.d_model

  def get(key, transform=None):
    x = np.asarray(sd[key], np.float32)
    return np.ascontiguousarray(x if transform is None else transform(x)).astype(dtype)

  params: dict[str, Any] = {
    'token_embed': get('shared.weight'),
    'relative_attention_bias': get(_REL_BIAS),
    'final_norm': {'scale': get('encoder.final_layer_norm.weight')},
  }
  wi = ('wi_0', 'wi_1') if cfg.gated else ('wi',)
  for i in range(cfg.num_layers):
    attn, ff = _ATTN.format(i=i), _FF.format(i=i)
    heads_in = lambda w: w.T.reshape(d, h, dk)  # noqa: E731
    block = {
      'attn_norm': {'scale': get(f'encoder.block.{i}.layer.0.layer_norm.weight')},
      'mlp_norm': {'scale': get(f'encoder.block.{i}.layer.1.layer_norm.weight')},
      'attn': {n: {'kernel': get(f'{attn}{n}.weight', heads_in)} for n in 'qkv'},
      'mlp': {n: {'kernel': get(f'{ff}{n}.weight', np.transpose)} for n in wi},
    }
    block['attn']['o'] = {
      'kernel': get(f'{attn}o.weight', lambda w: w.T.reshape(h, dk, d))
    }
    block['mlp']['wo'] = {'kernel': get(f'{ff}wo.weight', np.transpose)}
    params[f'block_{i}'] = block
  return params


def load_t5_encoder(
  folder: str | os.PathLike, **overrides: Any
) -> tuple[T5Config, dict]:
  """(config, params) of the T5 encoder saved in a local Hugging Face folder.

  ``overrides`` go to `T5Config` (e.g. ``dtype=jnp.bfloat16``). Parameters are
  numpy arrays in ``param_dtype``; pass them to ``T5Encoder(cfg).apply``.
  """
  cfg = read_config(folder, **overrides)
  path = weights_path(folder)
  # A full T5ForConditionalGeneration folder (flan-t5-xl: ~11 GB in f32):
  # the decoder is never read.
  sd = torch_io.load_state_dict(
    path, keep=lambda k: not k.startswith(_IGNORED_PREFIXES)
  )
  return cfg, params_from_state_dict(sd, cfg, path)
