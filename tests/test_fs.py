"""gs:// work directories: varrl_jax.fs, the metric writer and manifests.

No network here: a fake GCS filesystem is registered with fsspec under the
'gcs' protocol (what etils.epath asks fsspec for on ``gs://`` paths), storing
objects under a temp folder. It is an object store like GCS in the way
that matters: no append mode, so the writer must rewrite the object.
Orbax's array writes go through tensorstore's own GCS driver, which a fake
fsspec cannot stand in for; they are not exercised here.
"""

import json
import os

import fsspec
import numpy as np
import pytest
from etils.epath import backend as epath_backend
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from varrl_jax import checkpoint, fs
from varrl_jax.writers import MetricWriter, read_jsonl


class FakeGCS(LocalFileSystem):
  """gs://BUCKET/KEY -> ROOT/BUCKET/KEY on local disk; no appends."""

  root = ''
  protocol = ('gcs', 'gs')
  cachable = False

  def __init__(self, *args, finalize_on_close=False, **kwargs):
    del finalize_on_close
    super().__init__(*args, auto_mkdir=True, **kwargs)

  @classmethod
  def _strip_protocol(cls, path):
    path = os.fspath(path)
    for prefix in ('gs://', 'gcs://'):
      if path.startswith(prefix):
        path = path[len(prefix) :]
    if path.startswith(cls.root):
      return path.rstrip('/')
    return os.path.join(cls.root, path).rstrip('/')

  def _open(self, path, mode='rb', **kwargs):
    if 'a' in mode:
      raise OSError('GCS objects cannot be appended to')
    return super()._open(path, mode=mode, **kwargs)


@pytest.fixture
def gcs(tmp_path, monkeypatch):
  """Registers the fake; returns the local folder that holds the bucket."""
  monkeypatch.setattr(FakeGCS, 'root', str(tmp_path / 'gcs'))
  (tmp_path / 'gcs').mkdir()
  fsspec.register_implementation('gcs', FakeGCS, clobber=True)
  epath_backend.fsspec_backend._get_filesystem.cache_clear()
  monkeypatch.setattr('etils.epath.gpath._is_tf_installed', lambda: False)
  yield tmp_path / 'gcs'
  epath_backend.fsspec_backend._get_filesystem.cache_clear()


def test_fake_store_refuses_appends(gcs):
  fs.write_text('gs://b/x.txt', 'a')
  with pytest.raises(OSError, match='appended'):
    fs._epath('gs://b/x.txt').open('a')


def test_paths_keep_urls_and_make_local_paths_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert fs.resolve('gs://b/run/') == 'gs://b/run'
  assert fs.resolve('run') == str(tmp_path / 'run')
  assert fs.join('gs://b/run', 'checkpoints', 'final') == 'gs://b/run/checkpoints/final'
  assert fs.dirname('gs://b/run/grid.png') == 'gs://b/run'
  assert fs.is_url('gs://b') and not fs.is_url('/tmp/gs:/b')


def test_file_operations_on_a_bucket(gcs):
  d = 'gs://bucket/run/eval'
  fs.makedirs(d)
  fs.write_text(fs.join(d, 'metrics.json'), '{"a": 1}')
  image = Image.fromarray(np.full((4, 6, 3), 200, np.uint8))
  fs.save_image(fs.join(d, 'grid.png'), image)
  fs.save_image(fs.join(d, 'photo.jpg'), image)
  assert fs.isdir(d) and fs.isfile(fs.join(d, 'metrics.json'))
  assert fs.listdir(d) == ['grid.png', 'metrics.json', 'photo.jpg']
  assert json.loads(fs.read_text(fs.join(d, 'metrics.json'))) == {'a': 1}
  # The objects really are where the bucket keeps them, and the PNG decodes.
  local = gcs / 'bucket' / 'run' / 'eval'
  assert Image.open(local / 'grid.png').format == 'PNG'
  assert Image.open(local / 'photo.jpg').format == 'JPEG'
  fs.rmtree('gs://bucket/run')
  assert not fs.exists(d) and not (gcs / 'bucket' / 'run').exists()


def test_metric_writer_appends_to_an_object_across_runs(gcs):
  logdir = 'gs://bucket/run'
  w = MetricWriter(logdir, tensorboard=False)
  w.write(1, {'loss': 1.0})
  w.write(2, {'loss': float('nan')})
  w.close()
  # A resumed run adds to the same object (read back, rewritten whole).
  w = MetricWriter(logdir, tensorboard=False)
  w.write(3, {'loss': 0.5})
  w.close()
  records = read_jsonl('gs://bucket/run/metrics.jsonl')
  assert [r['step'] for r in records] == [1, 2, 3]
  assert records[1]['loss'] == 'nan' and records[2]['loss'] == 0.5
  assert (gcs / 'bucket' / 'run' / 'metrics.jsonl').is_file()


def test_remote_appender_rewrites_at_most_once_per_interval(gcs):
  a = fs.TextAppender('gs://bucket/log.txt', min_interval_s=3600)
  a.write('one\n')
  a.flush()  # first flush writes
  a.write('two\n')
  a.flush()  # within the interval: kept in memory
  assert fs.read_text('gs://bucket/log.txt') == 'one\n'
  a.close()  # close always writes
  assert fs.read_text('gs://bucket/log.txt') == 'one\ntwo\n'


def test_manifest_errors_name_the_url(gcs):
  with pytest.raises(
    checkpoint.CheckpointError, match=r'checkpoint gs://bucket/ck: no'
  ):
    checkpoint.read_manifest('gs://bucket/ck')
  fs.makedirs('gs://bucket/ck')
  fs.write_text('gs://bucket/ck/manifest.json', '{"parts": ["tokenizer"], "step": 3}')
  assert checkpoint.read_manifest('gs://bucket/ck')['step'] == 3
  fs.write_text('gs://bucket/ck/manifest.json', '{not json')
  with pytest.raises(checkpoint.CheckpointError, match='unreadable manifest.json'):
    checkpoint.read_manifest('gs://bucket/ck')
