"""Parameter checkpoints: exact round trip, and one-line errors for bad ones."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from tests.conftest import toy_config
from varrl_jax import checkpoint, train_checkpoints
from varrl_jax.models.family import build_model

# A restore of a damaged checkpoint leaves orbax futures whose callbacks fire
# after their event loop closed, in whichever test runs next: harmless noise.
pytestmark = pytest.mark.filterwarnings(
  'ignore::pytest.PytestUnraisableExceptionWarning'
)


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope='module')
def saved(toy, tmp_path_factory):
  """A full toy checkpoint laid out like the transformer stage's output."""
  config, _, params = toy
  path = str(tmp_path_factory.mktemp('w') / 'transformer' / 'checkpoints' / 'final')
  checkpoint.save_params(
    path, params, {'config': config.to_dict(), 'command': 'CMD', 'step': 7}
  )
  return path


def _one_line_error(excinfo, path, *needles):
  msg = str(excinfo.value)
  assert '\n' not in msg
  assert os.path.abspath(path) in msg
  for needle in needles:
    assert needle in msg, msg
  return msg


def test_round_trip_is_exact(toy, saved):
  _, model, params = toy
  loaded = checkpoint.load_params(saved, model)
  _assert_trees_equal(loaded, params)
  manifest = checkpoint.read_manifest(saved)
  assert manifest['parts'] == ['tokenizer', 'transformer'] and manifest['step'] == 7


def test_tokenizer_part_alone(toy, tmp_path):
  config, model, params = toy
  path = str(tmp_path / 'tokenizer' / 'checkpoints' / 'final')
  checkpoint.save_params(path, {'tokenizer': params['tokenizer']}, {})
  loaded = checkpoint.load_params(path, model, ('tokenizer',))
  _assert_trees_equal(loaded['tokenizer'], params['tokenizer'])
  with pytest.raises(checkpoint.CheckpointError) as e:
    checkpoint.load_params(path, model)
  # The recreate command is inferred from the WORKDIR/<stage>/checkpoints layout.
  _one_line_error(
    e,
    path,
    'holds no transformer parameters',
    f'python -m varrl_jax.pretrain --config=configs/tiny.py --stage=transformer '
    f'--workdir={tmp_path}',
  )


def test_missing_directory(toy, tmp_path):
  _, model, _ = toy
  path = str(tmp_path / 'nope')
  with pytest.raises(checkpoint.CheckpointError) as e:
    checkpoint.load_params(path, model, recreate='python -m varrl_jax.pretrain X')
  _one_line_error(e, path, 'no such directory', 'python -m varrl_jax.pretrain X')


@pytest.mark.parametrize(
  'damage', ['no_manifest', 'bad_manifest', 'bad_metadata', 'bad_data']
)
def test_damaged_checkpoint(toy, saved, tmp_path, damage):
  _, model, _ = toy
  path = str(tmp_path / 'copy')
  shutil.copytree(saved, path)
  if damage == 'no_manifest':
    os.remove(os.path.join(path, 'manifest.json'))
  elif damage == 'bad_manifest':
    with open(os.path.join(path, 'manifest.json'), 'w') as f:
      f.write('{not json')
  else:
    # Every metadata file, or every array data file, of the transformer part.
    for root, _, files in os.walk(os.path.join(path, 'transformer')):
      for name in files:
        is_data = os.path.basename(root) == 'd'
        if is_data == (damage == 'bad_data'):
          with open(os.path.join(root, name), 'wb') as f:
            f.write(b'garbage')
  with pytest.raises(checkpoint.CheckpointError) as e:
    checkpoint.load_params(path, model)
  # With a readable manifest the recreate command is the recorded one.
  needle = (
    'CMD' if damage.startswith('bad_') and damage != 'bad_manifest' else 'pretrain'
  )
  _one_line_error(e, path, needle)


def test_shape_mismatch_names_parameter_and_config(saved):
  config = toy_config()
  config.model.d_model = 48
  with pytest.raises(checkpoint.CheckpointError) as e:
    checkpoint.load_params(saved, build_model(config), config=config.to_dict())
  _one_line_error(
    e, saved, 'transformer: parameter', 'model.d_model: checkpoint 32 vs config 48'
  )


def test_manifest_is_json_with_config(saved):
  with open(os.path.join(saved, 'manifest.json')) as f:
    manifest = json.load(f)
  assert manifest['config']['tokenizer']['codebook_size'] == 64
  assert manifest['command'] == 'CMD' and manifest['format'] == checkpoint.FORMAT


def _fmix32(h):
  # MurmurHash3's finalizer, written out on Python integers.
  h ^= h >> 16
  h = (h * 0x85EBCA6B) % 2**32
  h ^= h >> 13
  h = (h * 0xC2B2AE35) % 2**32
  return h ^ (h >> 16)


def test_fingerprint_checksums_match_their_definition():
  """Per leaf: the sum of the words, and the sum of fmix32(word ^ fmix32(i))
  (i the row-major index), both modulo 2**32; here with Python integers."""
  import jax.numpy as jnp

  rng = np.random.default_rng(0)
  for x in (
    rng.normal(size=(3, 5, 7)).astype(np.float32),
    jnp.asarray(rng.normal(size=(4, 9)), jnp.bfloat16),
    rng.integers(-100, 100, size=(6,)).astype(np.int8),
    np.array([True, False, True]),
  ):
    bits = np.asarray(x).view(f'u{np.asarray(x).dtype.itemsize}').reshape(-1)
    want = [
      sum(int(b) for b in bits) % 2**32,
      sum(_fmix32(int(b) ^ _fmix32(i)) for i, b in enumerate(bits)) % 2**32,
    ]
    got = np.asarray(train_checkpoints._leaf_checksums(jnp.asarray(x)))
    assert got.dtype == np.uint32
    assert got.tolist() == want, x.dtype


def test_fingerprint_tells_every_change_apart_and_ignores_placement():
  import jax.numpy as jnp

  rng = np.random.default_rng(1)
  tree = {
    'w': jnp.asarray(rng.normal(size=(16, 8)), jnp.bfloat16),
    'b': jnp.asarray(rng.normal(size=(8,)), jnp.float32),
  }
  base = checkpoint.fingerprint(tree)
  # The same values on the host, or copied on device: the same digest.
  assert checkpoint.fingerprint(jax.tree.map(np.asarray, tree)) == base
  assert checkpoint.fingerprint(jax.tree.map(jnp.copy, tree)) == base
  # One bit of one bfloat16 weight (the last mantissa bit).
  w = np.asarray(tree['w']).copy()
  bits = w.view(np.uint16)
  bits[3, 5] ^= 1
  assert checkpoint.fingerprint({**tree, 'w': jnp.asarray(w)}) != base
  # Two unequal elements swapped: the same multiset of values.
  b = np.asarray(tree['b']).copy()
  b[[0, 1]] = b[[1, 0]]
  assert b[0] != b[1]
  assert checkpoint.fingerprint({**tree, 'b': jnp.asarray(b)}) != base
  # 1.0 and 2.0 swapped 256 apart: their words differ by 2**23, so a sum
  # weighted by any linear function of the index (2i+1) misses this swap.
  x = np.zeros(512, np.float32)
  x[0], x[256] = 1.0, 2.0
  y = x.copy()
  y[0], y[256] = 2.0, 1.0
  assert checkpoint.fingerprint({'x': x}) != checkpoint.fingerprint({'x': y})
  # Same values in another dtype, or under another name.
  assert checkpoint.fingerprint({**tree, 'b': tree['b'].astype(jnp.bfloat16)}) != base
  assert checkpoint.fingerprint({'v': tree['w'], 'b': tree['b']}) != base


def test_late_reports_of_abandoned_reads_stay_off_the_log(caplog):
  """A read still in flight when a failed restore returns dies later: its
  'exception was never retrieved' must not reach the log then either, while
  asyncio's other reports still do (the CI failure of session 19)."""
  import asyncio
  import gc

  with train_checkpoints._quiet_failed_reads():
    pass  # the restore that failed

  async def async_deserialize():  # orbax's read coroutine, by its message
    raise ValueError('DATA_LOSS: Error opening "zarr" driver (tensorstore)')

  async def user_task():
    raise ValueError('a user task')

  def abandon(coro):
    loop = asyncio.new_event_loop()
    task = loop.create_task(coro)
    loop.run_until_complete(asyncio.sleep(0))  # the task runs and fails
    loop.close()
    return task

  caplog.set_level('ERROR', logger='asyncio')
  task = abandon(async_deserialize())
  del task
  gc.collect()
  assert not [r for r in caplog.records if r.name == 'asyncio']
  task = abandon(user_task())
  del task
  gc.collect()
  reports = [r.getMessage() for r in caplog.records if r.name == 'asyncio']
  assert len(reports) == 1 and 'never retrieved' in reports[0], reports
