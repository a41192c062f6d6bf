"""Reads PyTorch checkpoints (``torch.save`` zip files, safetensors) with numpy.

The official VAR / Infinity weights are torch files, but the converter must
run on TPU VMs without torch. A ``torch.save`` file is a zip holding a pickle
(``<name>/data.pkl``) whose tensors point at raw storages (``<name>/data/<k>``).
We unpickle it with a whitelist of the few globals a state dict needs, so a
checkpoint downloaded from the internet cannot run code, and rebuild each
tensor from its storage, offset, size and stride.

numpy has no bfloat16: bfloat16 tensors come back as float32 (exact, since
bf16 is the top half of an f32). float16 stays float16.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Callable

import numpy as np

# What ``torch.save(..., _use_new_zipfile_serialization=False)`` writes
# first: pickle protocol 2, then the LONG1 magic number 0x1950a86a20f9469cfc6c.
_LEGACY_MAGIC = b'\x80\x02\x8a\x0a' + (0x1950A86A20F9469CFC6C).to_bytes(10, 'little')

_BF16 = 'bfloat16'  # read as uint16, upcast to float32 after the view is built

# (torch storage class, safetensors dtype, numpy dtype), all little-endian.
_DTYPES = (
  ('FloatStorage', 'F32', 'float32'),
  ('HalfStorage', 'F16', 'float16'),
  ('BFloat16Storage', 'BF16', _BF16),
  ('DoubleStorage', 'F64', 'float64'),
  ('LongStorage', 'I64', 'int64'),
  ('IntStorage', 'I32', 'int32'),
  ('ShortStorage', 'I16', 'int16'),
  ('CharStorage', 'I8', 'int8'),
  ('ByteStorage', 'U8', 'uint8'),
  ('BoolStorage', 'BOOL', 'bool'),
)
_SAFETENSORS_DTYPES = {st: dtype for _, st, dtype in _DTYPES}


class CheckpointFileError(ValueError):
  """A checkpoint file we cannot read; its message is one line naming the file.

  ``key`` is the tensor (state-dict key) concerned, when the problem is one
  tensor's, so a user can tell a truncated download from a wrong file.
  """

  def __init__(self, path, message: str, key: str | None = None):
    self.path = os.fspath(path)
    self.key = key
    where = self.path if key is None else f'{self.path} [key {key!r}]'
    super().__init__(f'{where}: {" ".join(message.split())}')


def sha256_file(path: str | os.PathLike) -> str:
  """Hex SHA-256 of a file, streamed: the manifest records which download we used."""
  with open(path, 'rb') as f:
    return hashlib.file_digest(f, 'sha256').hexdigest()


def load_state_dict(
  path: str | os.PathLike, keep: Callable[[str], bool] | None = None
) -> dict[str, np.ndarray]:
  """Flat ``{key: array}`` from a torch.save zip, safetensors or shard index.

  Args:
    path: a ``torch.save`` file (zip format, torch>=1.6), a ``.safetensors``
      file, or a ``*.index.json`` whose ``weight_map`` names shards (either
      kind) next to it; all shards are loaded and their keys merged.
    keep: if given, only keys for which it is true are read (the others are
      never materialised, and shards holding none of them are not opened):
      e.g. the encoder of a full T5 checkpoint without its decoder.

  Returns:
    Native-endian numpy arrays, bfloat16 upcast to float32. A checkpoint that
    nests its state dict (``{'model': {...}, 'epoch': 3}``) is flattened with
    '.'-joined keys (``'model.blocks.0.attn.proj.weight'``); no prefix is
    guessed or stripped, the caller picks it. Non-tensor leaves (counters,
    strings, None) carry no weights and are dropped.

  Raises:
    CheckpointFileError: one line naming the file (and the key, where one
      tensor is at fault) and what is wrong.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise CheckpointFileError(path, 'no such file')
  if os.path.isdir(path):
    raise CheckpointFileError(path, 'is a directory, not a checkpoint file')
  if path.endswith('.json'):
    return _load_index(path, keep)
  with open(path, 'rb') as f:
    head = f.read(len(_LEGACY_MAGIC))
  if not head:
    raise CheckpointFileError(path, 'empty file')
  if head.startswith(b'PK'):
    return _load_torch_zip(path, keep)
  if head.startswith(_LEGACY_MAGIC):
    raise CheckpointFileError(
      path,
      'legacy torch format; re-save it with torch>=1.6 (torch.save(torch.load(p), p))',
    )
  if path.endswith('.safetensors') or head[8:9] == b'{':
    return _load_safetensors(path, keep)
  if head.startswith(b'\x93NUMPY'):
    kind = 'a numpy .npy file'
  elif head[:1] == b'\x80':
    kind = 'a bare pickle'
  else:
    kind = 'unknown format'
  raise CheckpointFileError(
    path, f'not a checkpoint ({kind}); expected a torch.save zip or .safetensors'
  )


# --- torch.save zip ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _StorageType:
  dtype: str


@dataclasses.dataclass(frozen=True)
class _TensorRef:
  """A tensor not yet read: built lazily so errors can name its state-dict key."""

  entry: str  # storage key: the zip entry is <prefix>data/<entry>
  dtype: str
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor(storage, offset, size, stride, *unused):
  del unused  # requires_grad, backward_hooks, metadata
  entry, dtype = storage  # from persistent_load
  size, stride = tuple(int(n) for n in size), tuple(int(s) for s in stride)
  if len(size) != len(stride):  # errors here surface as 'cannot unpickle'
    raise ValueError(f'size {size} and stride {stride} differ in rank')
  return _TensorRef(entry, dtype, int(offset), size, stride)


def _rebuild_parameter(data, *unused):
  del unused  # requires_grad, backward_hooks, state
  return data


_ALLOWED_GLOBALS = {
  ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
  ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
  ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
  ('collections', 'OrderedDict'): collections.OrderedDict,
  ('torch', 'Size'): tuple,
  **{('torch', storage): _StorageType(dtype) for storage, _, dtype in _DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only `_ALLOWED_GLOBALS`: a state dict needs nothing else."""

  def __init__(self, data: bytes, path: str):
    super().__init__(io.BytesIO(data))
    self._path = path

  def find_class(self, module, name):
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise CheckpointFileError(
        self._path,
        f'pickle global {module}.{name} is not allowed (only tensors, dicts '
        'and plain values are read, so a checkpoint cannot run code)',
      ) from None

  def persistent_load(self, pid):
    # ('storage', storage type, key, location, numel)
    if isinstance(pid, tuple) and len(pid) == 5 and isinstance(pid[1], _StorageType):
      return str(pid[2]), pid[1].dtype
    raise CheckpointFileError(self._path, f'unexpected persistent id {pid!r:.80}')


def _load_torch_zip(path: str, keep=None) -> dict[str, np.ndarray]:
  try:
    zf = zipfile.ZipFile(path)
  except zipfile.BadZipFile as e:
    raise CheckpointFileError(
      path, f'truncated or corrupt zip archive ({e}); download it again'
    ) from None
  with zf:
    names = set(zf.namelist())
    pkls = sorted(n for n in names if n.endswith('/data.pkl') and n.count('/') == 1)
    if not pkls:
      raise CheckpointFileError(
        path, 'a zip without <name>/data.pkl: not a torch.save checkpoint'
      )
    prefix = pkls[0][: -len('data.pkl')]
    order = '<'
    if prefix + 'byteorder' in names:
      order = '>' if _read_entry(zf, path, prefix + 'byteorder') == b'big' else '<'
    try:
      tree = _RestrictedUnpickler(_read_entry(zf, path, pkls[0]), path).load()
    except CheckpointFileError:
      raise
    except Exception as e:  # a corrupt pickle raises any of a dozen types
      raise CheckpointFileError(
        path, f'cannot unpickle {pkls[0]}: {type(e).__name__}: {e}'
      ) from e
    if not isinstance(tree, dict):
      raise CheckpointFileError(
        path, f'holds a {type(tree).__name__}, not a state dict (a dict of tensors)'
      )
    refs = {}
    _flatten(tree, '', refs, path)
    if keep is not None:
      refs = {k: r for k, r in refs.items() if keep(k)}
    # Storages shared by several tensors are read once and dropped after
    # their last tensor, so peak memory stays near one copy of the weights.
    uses = collections.Counter(ref.entry for ref in refs.values())
    cache, out = {}, {}
    for key, ref in refs.items():
      entry = ref.entry
      if entry not in cache:
        cache[entry] = _read_entry(zf, path, f'{prefix}data/{entry}', key)
      out[key] = _materialize(ref, cache[entry], order, path, key)
      uses[entry] -= 1
      if not uses[entry]:
        del cache[entry]
  return out


def _read_entry(zf, path: str, name: str, key: str | None = None) -> bytes:
  try:
    return zf.read(name)
  except KeyError:
    raise CheckpointFileError(path, f'the archive has no entry {name}', key) from None
  except (zipfile.BadZipFile, EOFError, OSError) as e:
    raise CheckpointFileError(path, f'cannot read entry {name}: {e}', key) from None


def _flatten(tree, prefix: str, out: dict, path: str) -> None:
  items = tree.items() if isinstance(tree, dict) else enumerate(tree)
  for k, v in items:
    name = f'{prefix}{k}'
    if isinstance(v, _TensorRef):
      if name in out:
        raise CheckpointFileError(path, 'two tensors flatten to this key', name)
      out[name] = v
    elif isinstance(v, dict | list | tuple):
      _flatten(v, name + '.', out, path)


def _materialize(ref: _TensorRef, raw: bytes, order: str, path, key) -> np.ndarray:
  """The tensor's elements copied out of its storage: ``as_strided`` + copy."""
  dtype = np.dtype('uint16' if ref.dtype == _BF16 else ref.dtype)
  dtype = dtype.newbyteorder(order)
  held = len(raw) // dtype.itemsize
  if any(s < 0 for s in ref.stride) or ref.offset < 0:
    raise CheckpointFileError(path, f'negative stride or offset {ref}', key)
  if 0 in ref.size:
    arr = np.zeros(ref.size, dtype)
  else:
    needed = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride)) + 1
    if needed > held:
      raise CheckpointFileError(
        path,
        f'storage data/{ref.entry} holds {held} elements but the '
        f'tensor needs {needed}; the file is truncated or corrupt',
        key,
      )
    flat = np.frombuffer(raw, dtype, count=held)[ref.offset :]
    arr = np.lib.stride_tricks.as_strided(
      flat, ref.size, [s * dtype.itemsize for s in ref.stride], writeable=False
    ).copy()
  arr = arr.astype(arr.dtype.newbyteorder('='), copy=False)
  return _bf16_to_f32(arr) if ref.dtype == _BF16 else arr


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
  return (bits.astype(np.uint32) << 16).view(np.float32)


# --- safetensors ------------------------------------------------------------


def _load_safetensors(path: str, keep=None) -> dict[str, np.ndarray]:
  """8-byte little-endian header length, a JSON header, then raw data."""
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    head = f.read(8)
    if len(head) < 8:
      raise CheckpointFileError(path, 'truncated safetensors file: no header')
    (n,) = struct.unpack('<Q', head)
    if 8 + n > size:
      raise CheckpointFileError(
        path,
        f'safetensors header length {n} runs past the end of the file '
        f'({size} bytes); truncated or not a safetensors file',
      )
    try:
      header = json.loads(f.read(n))
      if not isinstance(header, dict):
        raise ValueError(f'a {type(header).__name__}, not an object')
    except ValueError as e:
      raise CheckpointFileError(path, f'safetensors header is not JSON ({e})') from None
    header.pop('__metadata__', None)
    out = {}
    for key, info in header.items():
      if keep is not None and not keep(key):
        continue
      try:
        dtype = _SAFETENSORS_DTYPES[info['dtype']]
        shape = tuple(int(d) for d in info['shape'])
        begin, end = (int(o) for o in info['data_offsets'])
      except (KeyError, TypeError, ValueError) as e:
        raise CheckpointFileError(
          path, f'bad safetensors header entry {info!r:.120} ({e!r})', key
        ) from None
      np_dtype = np.dtype('<u2' if dtype == _BF16 else dtype).newbyteorder('<')
      nbytes = int(np.prod(shape)) * np_dtype.itemsize
      if begin < 0 or end - begin != nbytes:
        raise CheckpointFileError(
          path, f'data_offsets [{begin}, {end}] do not hold {shape} {dtype}', key
        )
      if 8 + n + end > size:
        raise CheckpointFileError(
          path,
          f'data_offsets [{begin}, {end}] run past the end of the file '
          f'({size} bytes); truncated?',
          key,
        )
      f.seek(8 + n + begin)
      buf = bytearray(nbytes)
      f.readinto(buf)
      arr = np.frombuffer(buf, np_dtype).reshape(shape)
      arr = arr.astype(arr.dtype.newbyteorder('='), copy=False)
      out[key] = _bf16_to_f32(arr) if dtype == _BF16 else arr
  return out


def _load_index(path: str, keep=None) -> dict[str, np.ndarray]:
  """A sharded checkpoint: ``{"weight_map": {key: shard file name}}``."""
  try:
    with open(path, encoding='utf-8') as f:
      weight_map = json.load(f)['weight_map']
    if keep is not None:
      weight_map = {k: v for k, v in weight_map.items() if keep(k)}
    shards = list(dict.fromkeys(weight_map.values()))  # unique, in order
  except (ValueError, KeyError, TypeError, AttributeError):
    raise CheckpointFileError(
      path, 'not a sharded-checkpoint index (JSON with a "weight_map")'
    ) from None
  out = {}
  for shard in shards:
    shard_path = os.path.join(os.path.dirname(path), shard)
    for key, arr in load_state_dict(shard_path, keep).items():
      if key in out:
        raise CheckpointFileError(path, f'key is in two shards (also {shard})', key)
      out[key] = arr
  missing = [k for k in weight_map if k not in out]
  if missing:
    raise CheckpointFileError(
      path,
      f'{len(missing)} weight_map keys are in none of the shards (first shown)',
      missing[0],
    )
  return out
