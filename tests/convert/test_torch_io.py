"""torch_io against torch itself: what torch.save writes, we read back exactly."""

import collections
import hashlib
import json
import os
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from varrl_jax.convert import torch_io
from varrl_jax.convert.torch_io import CheckpointFileError, load_state_dict

# safetensors is not in our venv; the format is simple enough to write here,
# so these tests never skip. dtype -> (safetensors name, int view for bytes).
_ST_NAMES = {
  torch.float64: 'F64',
  torch.float32: 'F32',
  torch.float16: 'F16',
  torch.bfloat16: 'BF16',
  torch.int64: 'I64',
  torch.int32: 'I32',
  torch.int16: 'I16',
  torch.int8: 'I8',
  torch.uint8: 'U8',
  torch.bool: 'BOOL',
}


def _expected(t: torch.Tensor) -> np.ndarray:
  """What the reader must return: bfloat16 upcast to float32, else as is."""
  t = t.detach()
  return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _assert_same(got: dict, want: dict) -> None:
  assert list(got) == list(want)
  for k, t in want.items():
    e = _expected(t)
    assert got[k].dtype == e.dtype, k
    assert got[k].shape == e.shape, k
    np.testing.assert_array_equal(got[k], e, err_msg=k)


def _save_safetensors(path, tensors: dict, metadata=None) -> None:
  header, blobs, offset = {}, [], 0
  for k, t in tensors.items():
    raw = t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    header[k] = {
      'dtype': _ST_NAMES[t.dtype],
      'shape': list(t.shape),
      'data_offsets': [offset, offset + len(raw)],
    }
    blobs.append(raw)
    offset += len(raw)
  if metadata:
    header['__metadata__'] = metadata
  text = json.dumps(header).encode()
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(text)) + text + b''.join(blobs))


def _rewrite_zip(src, dst, edit) -> None:
  """Copies a torch.save zip, passing each entry's bytes through ``edit``."""
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w') as zout:
    for name in zin.namelist():
      zout.writestr(name, edit(name, zin.read(name)))


_DTYPES = list(_ST_NAMES)


def _sample(dtype: torch.dtype) -> torch.Tensor:
  g = torch.Generator().manual_seed(0)
  if dtype == torch.bool:
    return torch.rand(3, 5, generator=g) > 0.5
  if dtype.is_floating_point:
    return torch.randn(3, 5, generator=g).to(dtype) * 1e3
  return torch.randint(
    -100 if dtype != torch.uint8 else 0, 100, (3, 5), generator=g
  ).to(dtype)


@pytest.mark.parametrize('dtype', _DTYPES, ids=str)
def test_torch_save_dtypes(tmp_path, dtype):
  sd = {'w': _sample(dtype), 'scalar': _sample(dtype)[0, 0]}
  torch.save(sd, tmp_path / 'x.pth')
  _assert_same(load_state_dict(tmp_path / 'x.pth'), sd)


def test_non_contiguous_views_and_shared_storage(tmp_path):
  base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
  sd = collections.OrderedDict(
    base=base,
    transposed=base.t(),
    strided_slice=base[1:5:2, 3::2],
    offset_row=base[4],
    broadcast=base[0, :3].unsqueeze(0).expand(4, 3),  # stride 0
    empty=base[:0],
    half_view=base.half()[2:, 1:].t(),
  )
  torch.save(sd, tmp_path / 'x.pth')
  with zipfile.ZipFile(tmp_path / 'x.pth') as z:  # one storage for six tensors
    assert len([n for n in z.namelist() if '/data/' in n]) == 2
  got = load_state_dict(tmp_path / 'x.pth')
  _assert_same(got, sd)
  got['transposed'][0, 0] = -1  # a copy, not a view of another key's storage
  assert got['base'][0, 0] == 0 and got['strided_slice'].flags.c_contiguous


def test_nested_checkpoint_is_flattened_not_guessed(tmp_path):
  net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
  ckpt = {
    'trainer': {'var_wo_ddp': net.state_dict(), 'step': 7},
    'ema': [torch.ones(2)],
    'epoch': 3,
    'note': 'hello',
    'none': None,
  }
  torch.save(ckpt, tmp_path / 'x.pth')
  want = {f'trainer.var_wo_ddp.{k}': v for k, v in net.state_dict().items()}
  want['ema.0'] = torch.ones(2)
  got = load_state_dict(tmp_path / 'x.pth')
  _assert_same(got, want)
  assert got['trainer.var_wo_ddp.1.num_batches_tracked'].dtype == np.int64


def test_parameters_and_big_endian_archive(tmp_path):
  sd = {'p': torch.nn.Parameter(torch.randn(2, 3)), 'i': torch.arange(5)}
  torch.save(sd, tmp_path / 'x.pth')
  dtypes = {'0': np.float32, '1': np.int64}  # storage keys in save order

  def to_big(name, data):
    if name.endswith('byteorder'):
      return b'big'
    key = name.rsplit('/data/', 1)[-1]
    if '/data/' in name and key in dtypes:
      return np.frombuffer(data, dtypes[key]).byteswap().tobytes()
    return data

  _rewrite_zip(tmp_path / 'x.pth', tmp_path / 'big.pth', to_big)
  got = load_state_dict(tmp_path / 'big.pth')
  _assert_same(got, sd)
  assert got['i'].dtype.isnative


def test_safetensors_all_dtypes(tmp_path):
  sd = {f'w_{_ST_NAMES[d]}': _sample(d) for d in _DTYPES}
  sd['scalar'] = torch.tensor(2.5)
  sd['empty'] = torch.zeros(0, 4)
  _save_safetensors(tmp_path / 'm.safetensors', sd, metadata={'format': 'pt'})
  got = load_state_dict(str(tmp_path / 'm.safetensors'))
  _assert_same(got, sd)
  assert all(a.flags.writeable for a in got.values())


def test_sharded_index_merges_shards(tmp_path):
  a = {'blocks.0.w': torch.randn(2, 2), 'blocks.0.b': torch.randn(2).bfloat16()}
  b = {'head.w': torch.randn(3, 2).half()}
  # Any shard kind load_state_dict reads: safetensors (Infinity) or torch.save
  # (pytorch_model-*.bin); one of each here covers both.
  _save_safetensors(tmp_path / 'model-00001-of-00002.safetensors', a)
  torch.save(b, tmp_path / 'model-00002-of-00002.bin')
  weight_map = {k: 'model-00001-of-00002.safetensors' for k in a}
  weight_map.update({k: 'model-00002-of-00002.bin' for k in b})
  index = tmp_path / 'model.safetensors.index.json'
  index.write_text(json.dumps({'metadata': {}, 'weight_map': weight_map}))
  _assert_same(load_state_dict(index), {**a, **b})

  weight_map['lost'] = 'model-00002-of-00002.bin'
  index.write_text(json.dumps({'weight_map': weight_map}))
  err = _error(index)
  assert err.key == 'lost' and 'in none of the shards' in str(err)

  (tmp_path / 'model-00002-of-00002.bin').unlink()
  err = _error(index.parent / 'model-00002-of-00002.bin')  # names the shard
  assert 'no such file' in str(err)
  with pytest.raises(CheckpointFileError, match='00002-of-00002.bin: no such file'):
    load_state_dict(index)


def test_keep_reads_only_the_kept_keys(tmp_path):
  enc = {'encoder.w': torch.randn(2, 2), 'shared.weight': torch.randn(3, 2)}
  dec = {'decoder.w': torch.randn(4, 2), 'lm_head.weight': torch.randn(3, 2)}
  keep = lambda k: not k.startswith(('decoder.', 'lm_head.'))  # noqa: E731
  _save_safetensors(tmp_path / 'm.safetensors', {**enc, **dec})
  torch.save({**enc, **dec}, tmp_path / 'm.bin')
  for name in ('m.safetensors', 'm.bin'):
    _assert_same(load_state_dict(tmp_path / name, keep=keep), enc)
  # A shard holding only dropped keys is never opened: a missing one is fine.
  _save_safetensors(tmp_path / 'enc.safetensors', enc)
  weight_map = {k: 'enc.safetensors' for k in enc}
  weight_map.update({k: 'absent-decoder.safetensors' for k in dec})
  index = tmp_path / 'model.safetensors.index.json'
  index.write_text(json.dumps({'weight_map': weight_map}))
  _assert_same(load_state_dict(index, keep=keep), enc)
  with pytest.raises(CheckpointFileError, match='absent-decoder.safetensors'):
    load_state_dict(index)


def test_reads_without_torch(tmp_path):
  """The point of this module: TPU VMs have no torch installed."""
  torch.save({'w': torch.arange(4.0)}, tmp_path / 'x.pth')
  code = (
    "import sys; sys.modules['torch'] = None\n"
    'from varrl_jax.convert.torch_io import load_state_dict\n'
    f"print(load_state_dict({str(tmp_path / 'x.pth')!r})['w'].sum())"
  )
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == '6.0'


def test_sha256_file(tmp_path):
  data = os.urandom(3 << 20)
  (tmp_path / 'f').write_bytes(data)
  assert torch_io.sha256_file(tmp_path / 'f') == hashlib.sha256(data).hexdigest()


# --- errors: each one line, naming the file (and the key when one is at fault)


def _error(path) -> CheckpointFileError:
  with pytest.raises(CheckpointFileError) as info:
    load_state_dict(path)
  err = info.value
  assert str(path) in str(err) and err.path == str(path)
  assert '\n' not in str(err)
  return err


def test_error_missing_directory_empty_text_npy_npz_pickle(tmp_path):
  assert 'no such file' in str(_error(tmp_path / 'nope.pth'))
  assert 'directory' in str(_error(tmp_path))
  (tmp_path / 'empty.pth').write_bytes(b'')
  assert 'empty file' in str(_error(tmp_path / 'empty.pth'))
  (tmp_path / 'notes.pth').write_text('these are not weights\n')
  assert 'not a checkpoint (unknown format)' in str(_error(tmp_path / 'notes.pth'))
  np.save(tmp_path / 'w.npy', np.ones(3))
  assert 'numpy .npy' in str(_error(tmp_path / 'w.npy'))
  np.savez(tmp_path / 'w.npz', w=np.ones(3))
  assert 'not a torch.save checkpoint' in str(_error(tmp_path / 'w.npz'))
  (tmp_path / 'p.pkl').write_bytes(b'\x80\x04K\x01.')
  assert 'bare pickle' in str(_error(tmp_path / 'p.pkl'))


def test_error_not_a_state_dict(tmp_path):
  torch.save(torch.ones(2), tmp_path / 't.pth')
  assert 'not a state dict' in str(_error(tmp_path / 't.pth'))


def test_error_legacy_format(tmp_path):
  torch.save(
    {'w': torch.ones(2)}, tmp_path / 'old.pth', _use_new_zipfile_serialization=False
  )
  msg = str(_error(tmp_path / 'old.pth'))
  assert 'legacy torch format' in msg and 'torch.save(torch.load(p), p)' in msg


def test_error_truncated_torch_file(tmp_path):
  torch.save({'w': torch.randn(64, 64)}, tmp_path / 'x.pth')
  data = (tmp_path / 'x.pth').read_bytes()
  (tmp_path / 'cut.pth').write_bytes(data[: len(data) // 2])
  assert 'truncated or corrupt zip' in str(_error(tmp_path / 'cut.pth'))


def test_error_data_entry_shorter_than_tensor(tmp_path):
  torch.save(
    {'ok': torch.ones(3, dtype=torch.int8), 'w': torch.randn(8, 8)}, tmp_path / 'x.pth'
  )
  _rewrite_zip(
    tmp_path / 'x.pth',
    tmp_path / 'short.pth',
    lambda name, data: data[:100] if name.endswith('/data/1') else data,
  )
  err = _error(tmp_path / 'short.pth')
  assert err.key == 'w'
  assert "[key 'w']" in str(err) and 'holds 25 elements' in str(err)
  assert 'needs 64' in str(err)


def test_error_code_running_pickle_is_refused(tmp_path):
  marker = tmp_path / 'pwned'

  class Evil:
    def __reduce__(self):
      return (os.system, (f'touch {marker}',))

  torch.save({'w': torch.ones(2), 'x': Evil()}, tmp_path / 'evil.pth')
  msg = str(_error(tmp_path / 'evil.pth'))
  assert f'{os.system.__module__}.system is not allowed' in msg
  assert not marker.exists()


def test_error_safetensors_header_not_json(tmp_path):
  path = tmp_path / 'bad.safetensors'
  path.write_bytes(struct.pack('<Q', 5) + b'{nope' + b'\0' * 8)
  assert 'header is not JSON' in str(_error(path))


def test_error_safetensors_offsets_past_end(tmp_path):
  path = tmp_path / 'm.safetensors'
  _save_safetensors(path, {'a': torch.ones(4), 'b': torch.ones(16)})
  path.write_bytes(path.read_bytes()[:-8])  # a cut download
  err = _error(path)
  assert err.key == 'b' and 'run past the end of the file' in str(err)

  path.write_bytes(struct.pack('<Q', 1 << 40) + b'{}')
  assert 'header length' in str(_error(path))


def test_error_index_not_an_index(tmp_path):
  (tmp_path / 'x.index.json').write_text('{"weights": {}}')
  assert 'weight_map' in str(_error(tmp_path / 'x.index.json'))
