"""The official VQ-VAE state_dict (``vae_ch160v4096z32.pth`` layout) <-> our
`VarVQVAE` variables.

Keys follow their module tree: ``encoder.down.0.block.1.conv1.weight``,
``decoder.mid.attn_1.qkv.bias``, ``quant_conv.weight``,
``quantize.embedding.weight``, ``quantize.quant_resi.qresi_ls.0.weight``.
Convolutions are OIHW there and HWIO here (1x1 ones too); GroupNorm
``weight`` is our ``scale``; the embedding is our ``codebook`` [V, C].

The expected key -> shape map is derived from the module's own parameter
shapes (``jax.eval_shape`` of its init), so any ch / V / C / ch_mult / K
checks strictly: a missing key, an unexpected key or a wrong shape raises
`ConversionError`. Their non-parameter buffer ``quantize.ema_vocab_hit_SV``
(a [S, V] codebook-usage EMA kept for VAE training) is accepted and ignored.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from varrl_jax.models.var_official.errors import ConversionError
from varrl_jax.models.var_official.vqvae import VarVQVAE

# Buffers of theirs that are no parameters of ours (any shape: their
# load_state_dict replaces a mismatched one too).
IGNORED_BUFFERS = ('quantize.ema_vocab_hit_SV',)
_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}
_LIST = re.compile(r'(down|up|block|attn)_(\d+)')


def torch_key(path: tuple[str, ...], module: VarVQVAE) -> str:
  """Their state_dict key of our parameter ``path`` (flattened variable path
  under 'params')."""
  top, leaf = path[0], path[-1]
  if top == 'codebook':
    return 'quantize.embedding.weight'
  if top.startswith('phi_'):
    k = int(top.removeprefix('phi_'))
    prefix = {
      0: f'quantize.quant_resi.{k}',  # PhiNonShared is itself a ModuleList
      1: 'quantize.quant_resi.qresi',
    }.get(module.share_quant_resi, f'quantize.quant_resi.qresi_ls.{k}')
    return f'{prefix}.{_LEAF[leaf]}'
  parts = []
  for parent, seg in zip((None, *path[:-2]), path[:-1]):
    m = _LIST.fullmatch(seg)
    # Their ModuleLists (down.0, block.1) vs mid's plain attributes (block_1).
    parts += [m[1], m[2]] if m and parent != 'mid' else [seg]
  return '.'.join([*parts, _LEAF[leaf]])


def _hwio_to_oihw(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)))


def _oihw_to_hwio(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(x, (2, 3, 1, 0)))


def param_shapes(module: VarVQVAE) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Our flattened parameter path -> shape, without computing anything."""
  return dict(_param_shapes(module))


@functools.cache  # linen modules hash by their fields
def _param_shapes(module: VarVQVAE) -> dict[tuple[str, ...], tuple[int, ...]]:
  side = module.patch_nums[-1] * module.downsample
  img = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
  shapes = jax.eval_shape(module.init, jax.random.key(0), img)['params']
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()}


def expected_state_shapes(
  module: VarVQVAE, shapes: dict[tuple[str, ...], tuple[int, ...]] | None = None
) -> dict[str, tuple[int, ...]]:
  """Their key -> torch shape for every parameter of ``module`` (no buffers);
  ``shapes``: `param_shapes` of it, if already at hand."""
  out = {}
  for path, shape in (shapes or param_shapes(module)).items():
    is_conv = path[-1] == 'kernel'
    out[torch_key(path, module)] = (*shape[::-1][:2], *shape[:2]) if is_conv else shape
  return out


def vqvae_params_from_state_dict(
  sd: dict[str, np.ndarray], module: VarVQVAE, source: str
) -> dict:
  """Their state_dict (arrays by key) -> ``{'params': ...}`` for ``module``.

  Raises `ConversionError(source, key, ...)` on the first missing key (in
  sorted order), else the first unexpected key, else the first wrong shape.
  """
  shapes = param_shapes(module)
  expected = expected_state_shapes(module, shapes)
  missing = sorted(set(expected) - set(sd))
  if missing:
    more = f' ({len(missing)} keys missing in all)' if len(missing) > 1 else ''
    raise ConversionError(source, missing[0], f'missing from the state_dict{more}')
  unexpected = sorted(set(sd) - set(expected) - set(IGNORED_BUFFERS))
  if unexpected:
    more = f' ({len(unexpected)} unexpected in all)' if len(unexpected) > 1 else ''
    raise ConversionError(
      source, unexpected[0], f'not a parameter of this VarVQVAE{more}'
    )
  flat = {}
  for path in shapes:
    key = torch_key(path, module)
    value = np.asarray(sd[key], dtype=np.float32)
    if tuple(value.shape) != expected[key]:
      raise ConversionError(
        source, key, f'shape {tuple(value.shape)}, expected {expected[key]}'
      )
    flat[path] = _oihw_to_hwio(value) if path[-1] == 'kernel' else value
  return {'params': traverse_util.unflatten_dict(flat)}


def vqvae_state_dict_from_params(
  params: dict, module: VarVQVAE, with_buffers: bool = True
) -> dict[str, np.ndarray]:
  """Inverse of `vqvae_params_from_state_dict` (``params`` with or without
  the 'params' level). ``with_buffers`` adds a zero ``ema_vocab_hit_SV``
  [S, V] so that their strict ``load_state_dict`` accepts the result."""
  params = params.get('params', params)
  sd = {}
  for path, value in traverse_util.flatten_dict(params).items():
    value = np.asarray(value, dtype=np.float32)
    sd[torch_key(path, module)] = (
      _hwio_to_oihw(value) if path[-1] == 'kernel' else value
    )
  if with_buffers:
    shape = (len(module.patch_nums), module.vocab_size)
    sd['quantize.ema_vocab_hit_SV'] = np.zeros(shape, np.float32)
  return sd
