"""Public checkpoints -> our orbax checkpoint: the library behind
``python -m varrl_jax.convert`` (see its docstring).

Families and their sources (``convert(family, out, command, config,
**paths)``):

- ``var``: ``vae`` (vae_ch160v4096z32.pth), ``transformer`` (var_d16.pth).
- ``infinity``: ``transformer`` (infinity_2b_reg.pth, a full training
  checkpoint nesting it under ``trainer.gpt_fsdp``, or the 8B's sharded
  safetensors: their folder or its ``*.index.json``), ``vae``
  (infinity_vae_d32reg.pth, infinity_vae_d56_f8_14_patchify.pth) and
  ``text_encoder`` (the flan-t5-xl folder). The T5 encoder is checked (every
  key and shape, its tokenizer, its width = ``text_channels``) and recorded,
  not copied: the checkpoint's config points at the folder
  (``config.model.infinity.text_encoder``). It is frozen (RL never changes
  it), 4.9 GB in float32, and ``models/t5_embedder.PromptEmbedder`` loads it
  on the host the first time a prompt is encoded.
"""

from __future__ import annotations

import json
import os
import shutil

from varrl_jax import checkpoint
from varrl_jax.convert import torch_io
from varrl_jax.models.family import build_model

FAMILIES = ('var', 'infinity')
# The source flags each family needs, in the order they are checked.
SOURCES = {
  'var': ('vae', 'transformer'),
  'infinity': ('transformer', 'vae', 'text_encoder'),
}
# Looked for in a folder given as --transformer (transformers' order, shards
# first as the 8B is published).
FOLDER_WEIGHTS = (
  'model.safetensors.index.json',
  'pytorch_model.bin.index.json',
  'model.safetensors',
  'pytorch_model.bin',
)
# A full Infinity training checkpoint holds the model at trainer.gpt_fsdp
# (their save_slim_model / train.py); its optimizer state is never read.
TRAINER_PREFIX = 'trainer.gpt_fsdp.'


def _file(path: str) -> dict:
  return {
    'path': os.path.abspath(path),
    'bytes': os.path.getsize(path),
    'sha256': torch_io.sha256_file(path),
  }


def _files(path: str, files: list[str]) -> dict:
  """A source of several files: its path, total size and each file's record."""
  records = [_file(f) for f in files]
  return {
    'path': os.path.abspath(path),
    'bytes': sum(r['bytes'] for r in records),
    'files': records,
  }


def _shards(index: str) -> list[str]:
  with open(index, encoding='utf-8') as f:
    names = dict.fromkeys(json.load(f)['weight_map'].values())
  return [os.path.join(os.path.dirname(index), n) for n in names]


def _source(path: str) -> dict:
  """One file as {path, bytes, sha256}; an index with each of its shards."""
  if path.endswith('.json'):
    return _files(path, [path, *_shards(path)])
  return _file(path)


def convert_var(vae_path: str, transformer_path: str, config=None):
  """(config, params, sources) of an official VAR pair of checkpoints."""
  from varrl_jax.models.var_official import presets, weights

  vae_sd = torch_io.load_state_dict(vae_path)
  var_sd = torch_io.load_state_dict(transformer_path)
  if config is None:
    config = presets.infer_from_state_dicts(vae_sd, vae_path, var_sd, transformer_path)
  if config.model.family != 'var':
    raise ValueError(
      f'--config has model.family={config.model.family!r}; --family=var needs a '
      'var config (e.g. configs/var.py:16)'
    )
  model = build_model(config)
  params = weights.params_from_state_dicts(
    model, vae_sd, vae_path, var_sd, transformer_path
  )
  sources = {'vae': _source(vae_path), 'transformer': _source(transformer_path)}
  return config, params, sources


def weights_file(path: str, flag: str = 'transformer') -> str:
  """``path`` itself, or for a folder the first of `FOLDER_WEIGHTS` in it."""
  if not os.path.isdir(path):
    return path
  for name in FOLDER_WEIGHTS:
    if os.path.isfile(os.path.join(path, name)):
      return os.path.join(path, name)
  raise ValueError(
    f'--{flag}={path}: a folder with none of {", ".join(FOLDER_WEIGHTS)}'
  )


def infinity_transformer_state_dict(path: str) -> dict:
  """The Infinity transformer's state dict in ``path``: the file as is, or
  the ``trainer.gpt_fsdp`` part of a full training checkpoint."""
  sd = torch_io.load_state_dict(
    path, keep=lambda k: not k.startswith('trainer.') or k.startswith(TRAINER_PREFIX)
  )
  nested = {
    k[len(TRAINER_PREFIX) :]: v for k, v in sd.items() if k.startswith(TRAINER_PREFIX)
  }
  return nested or sd


def check_text_encoder(folder: str) -> tuple[int, dict]:
  """Loads the Flan-T5 folder once, as the family will (config, every weight
  key and shape, spiece.model), and drops it; returns (d_model, its source
  record: config.json, spiece.model and each weights file)."""
  from varrl_jax.models import t5_tokenizer, t5_weights

  if not os.path.isdir(folder):
    raise ValueError(
      f'--text_encoder={folder}: no such directory (a Hugging Face Flan-T5 folder: '
      'config.json, model.safetensors or shards, spiece.model)'
    )
  cfg, _ = t5_weights.load_t5_encoder(folder)
  try:
    t5_tokenizer.T5Tokenizer.from_folder(folder)
  except OSError as e:
    raise ValueError(f'--text_encoder={folder}: {e}') from None
  weights = t5_weights.weights_path(folder)
  files = [os.path.join(folder, n) for n in ('config.json', 'spiece.model')]
  files += [weights, *(_shards(weights) if weights.endswith('.json') else [])]
  return cfg.d_model, _files(folder, files)


def convert_infinity(
  transformer_path: str, vae_path: str, text_encoder: str, config=None
):
  """(config, params, sources) of official Infinity checkpoints + their T5."""
  from varrl_jax.models.infinity import presets, transformer_weights, vae_weights

  text_encoder = os.path.abspath(text_encoder)
  d_model, t5_source = check_text_encoder(text_encoder)
  transformer_path = weights_file(transformer_path)
  tr_sd = infinity_transformer_state_dict(transformer_path)
  vae_sd = vae_weights.vae_state_dict(torch_io.load_state_dict(vae_path))
  if config is None:
    config = presets.infer_from_state_dicts(vae_sd, vae_path, tr_sd, transformer_path)
  else:
    config = config.copy_and_resolve_references()
  if config.model.family != 'infinity':
    raise ValueError(
      f'--config has model.family={config.model.family!r}; --family=infinity needs '
      'an infinity config (e.g. configs/infinity_2b.py)'
    )
  if d_model != config.model.infinity.text_channels:
    raise ValueError(
      f'--text_encoder={text_encoder}: config.json: d_model={d_model}, but the '
      f'transformer takes text_channels={config.model.infinity.text_channels}'
    )
  config.model.infinity.text_encoder = text_encoder
  model = build_model(config)
  params = {
    'tokenizer': vae_weights.params_from_state_dict(vae_sd, model.tokenizer, vae_path),
    'transformer': transformer_weights.params_from_state_dict(
      tr_sd, model.cfg, transformer_path
    ),
  }
  sources = {
    'transformer': _source(transformer_path),
    'vae': _source(vae_path),
    'text_encoder': t5_source,
  }
  return config, params, sources


def convert(family: str, out: str, command: str, config=None, **paths) -> dict:
  """Converts and writes ``out``; returns the manifest. ``paths`` are the
  family's `SOURCES` (a flag given as None or '' counts as absent)."""
  out = os.path.abspath(out)
  if os.path.exists(out):
    raise ValueError(
      f'--out={out} exists; choose a new directory (nothing was written)'
    )
  if family not in SOURCES:
    raise ValueError(f'--family={family!r}; expected one of {FAMILIES}')
  for flag in SOURCES[family]:
    if not paths.get(flag):
      raise ValueError(f'--{flag} is required for --family={family}')
  extra = sorted(f for f, p in paths.items() if p and f not in SOURCES[family])
  if extra:
    raise ValueError(f'--{extra[0]} is not a source of --family={family}')
  if family == 'var':
    config, params, sources = convert_var(paths['vae'], paths['transformer'], config)
  else:
    config, params, sources = convert_infinity(
      paths['transformer'], paths['vae'], paths['text_encoder'], config
    )
  manifest = {
    'stage': 'converted',
    'family': family,
    'sources': sources,
    'config': config.to_dict(),
    'command': command,
  }
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f'.{os.path.basename(out)}.partial-{os.getpid()}')
  try:
    checkpoint.save_params(tmp, params, manifest)
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return manifest
