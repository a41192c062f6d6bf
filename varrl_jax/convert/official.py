"""Public checkpoints -> our orbax checkpoint: the library behind
``python -m varrl_jax.convert`` (see its docstring)."""

from __future__ import annotations

import os
import shutil

from varrl_jax import checkpoint
from varrl_jax.convert import torch_io
from varrl_jax.models.family import build_model

FAMILIES = ('var',)


def _source(path: str) -> dict:
  return {
    'path': os.path.abspath(path),
    'bytes': os.path.getsize(path),
    'sha256': torch_io.sha256_file(path),
  }


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


def convert(family: str, out: str, command: str, config=None, **paths) -> dict:
  """Converts and writes ``out``; returns the manifest."""
  out = os.path.abspath(out)
  if os.path.exists(out):
    raise ValueError(
      f'--out={out} exists; choose a new directory (nothing was written)'
    )
  for flag, path in paths.items():
    if not path:
      raise ValueError(f'--{flag} is required for --family={family}')
  if family == 'var':
    config, params, sources = convert_var(paths['vae'], paths['transformer'], config)
  else:
    raise ValueError(f'--family={family!r}; expected one of {FAMILIES}')
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
