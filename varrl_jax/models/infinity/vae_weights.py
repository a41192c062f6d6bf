"""The official Infinity BSQ-VAE state_dict <-> our `BSQVAE` variables.

Their checkpoints (``infinity_vae_d32reg.pth``, ``infinity_vae_d56_f8_14_
patchify.pth``) hold ``{'vae': state_dict, ...}``; `vae_state_dict` picks the
``vae.`` entries of a flattened checkpoint (`varrl_jax.convert.torch_io`).
Their loader (``bsq_vae/vae.py::load_cnn``) accepts two spellings of a key,
and so do we, one per parameter:

- the module's own: ``encoder.down.0.block.0.conv1.conv.weight``,
  ``encoder.down.0.block.0.norm1.norm.weight`` (their ``Conv`` and
  ``Normalize`` wrap an ``nn.Conv2d`` / ``nn.GroupNorm``);
- the plain flux-VAE one without the wrapper: ``...conv1.weight``,
  ``...norm1.weight``.

Convolutions are OIHW there and HWIO here (1x1 ones too); GroupNorm
``weight`` is our ``scale``. The expected key -> shape map comes from the
module's own parameter shapes (``jax.eval_shape`` of its init), so any d /
ch / ch_mult / num_res_blocks checks strictly: a missing key, an unexpected
key, a parameter given under both spellings, or a wrong shape raises
`ConversionError` naming the file and key. The quantizer's buffers
``quantize.lfq.mask`` / ``quantizer.lfq.mask`` (the bit weights 2^(d-1..0);
``self.quantize`` aliases ``self.quantizer`` there) are accepted and ignored.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from varrl_jax.models.infinity.bsq_vae import BSQVAE
from varrl_jax.models.var_official.errors import ConversionError

IGNORED_BUFFERS = ('quantize.lfq.mask', 'quantizer.lfq.mask')
_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}
_LIST = re.compile(r'(down|up|block)_(\d+)')


def torch_key(path: tuple[str, ...], plain: bool = False) -> str:
  """Their key of our parameter ``path`` (flattened under 'params'); ``plain``:
  the spelling without the ``.conv`` / ``.norm`` wrapper."""
  parts = []
  for parent, seg in zip((None, *path[:-2]), path[:-1]):
    m = _LIST.fullmatch(seg)
    # Their ModuleLists (down.0, block.1) vs mid's attributes (block_1).
    parts += [m[1], m[2]] if m and parent != 'mid' else [seg]
  if not plain:
    parts.append('norm' if path[-2].startswith('norm') else 'conv')
  return '.'.join([*parts, _LEAF[path[-1]]])


def _hwio_to_oihw(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)))


def _oihw_to_hwio(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(x, (2, 3, 1, 0)))


def param_shapes(module: BSQVAE) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Our flattened parameter path -> shape, without computing anything."""
  return dict(_param_shapes(module))


@functools.cache  # linen modules hash by their fields
def _param_shapes(module: BSQVAE) -> dict[tuple[str, ...], tuple[int, ...]]:
  img = jax.ShapeDtypeStruct((1, module.patch_size, module.patch_size, 3), jnp.float32)
  shapes = jax.eval_shape(module.init, jax.random.key(0), img)['params']
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()}


def _torch_shape(path, shape) -> tuple[int, ...]:
  return (*shape[::-1][:2], *shape[:2]) if path[-1] == 'kernel' else tuple(shape)


def expected_state_shapes(module: BSQVAE) -> dict[str, tuple[int, ...]]:
  """Their key (module spelling) -> torch shape for every parameter."""
  return {torch_key(p): _torch_shape(p, s) for p, s in param_shapes(module).items()}


def vae_state_dict(checkpoint: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The VAE part of a flattened checkpoint: its ``vae.*`` keys, prefix
  stripped (their ``vae_model`` reads ``state_dict['vae']``); a bare state
  dict (no ``vae.`` key) is returned as is."""
  sub = {k[4:]: v for k, v in checkpoint.items() if k.startswith('vae.')}
  return sub or dict(checkpoint)


def params_from_state_dict(sd: dict[str, np.ndarray], module: BSQVAE, source: str):
  """Their VAE state_dict (arrays by key) -> ``{'params': ...}`` of ``module``.

  Raises `ConversionError(source, key, ...)` on the first missing parameter
  (sorted, named by the module spelling), a parameter given under both
  spellings, the first unexpected key, or the first wrong shape.
  """
  shapes = param_shapes(module)
  found, missing = {}, []
  for path in shapes:
    names = [k for k in (torch_key(path), torch_key(path, plain=True)) if k in sd]
    if len(names) == 2:
      raise ConversionError(source, names[0], f'also given as {names[1]}')
    if names:
      found[path] = names[0]
    else:
      missing.append(torch_key(path))
  if missing:
    missing.sort()
    more = f' ({len(missing)} keys missing in all)' if len(missing) > 1 else ''
    raise ConversionError(source, missing[0], f'missing from the state_dict{more}')
  unexpected = sorted(set(sd) - set(found.values()) - set(IGNORED_BUFFERS))
  if unexpected:
    more = f' ({len(unexpected)} unexpected in all)' if len(unexpected) > 1 else ''
    raise ConversionError(
      source, unexpected[0], f'not a parameter of this BSQVAE{more}'
    )
  flat = {}
  for path, key in found.items():
    value = np.asarray(sd[key], dtype=np.float32)
    want = _torch_shape(path, shapes[path])
    if tuple(value.shape) != want:
      raise ConversionError(source, key, f'shape {tuple(value.shape)}, expected {want}')
    flat[path] = _oihw_to_hwio(value) if path[-1] == 'kernel' else value
  return {'params': traverse_util.unflatten_dict(flat)}


def state_dict_from_params(
  params: dict, module: BSQVAE, with_buffers: bool = True
) -> dict[str, np.ndarray]:
  """Inverse of `params_from_state_dict` (module spelling; ``params`` with or
  without the 'params' level). ``with_buffers`` adds the two int64 ``mask``
  buffers so that their strict ``load_state_dict`` accepts the result."""
  params = params.get('params', params)
  sd = {}
  for path, value in traverse_util.flatten_dict(params).items():
    value = np.asarray(value, dtype=np.float32)
    sd[torch_key(path)] = _hwio_to_oihw(value) if path[-1] == 'kernel' else value
  if with_buffers:
    mask = 2 ** np.arange(module.codebook_dim - 1, -1, -1, dtype=np.int64)
    sd.update({k: mask.copy() for k in IGNORED_BUFFERS})
  return sd
