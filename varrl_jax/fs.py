"""Work directories on local disk or in cloud storage (``gs://bucket/path``).

On a TPU pod every worker must see the same work directory (checkpoints are
written by all processes together, and a resumed job may land on other
VMs), so ``--workdir`` is usually a GCS bucket. Every file the project
writes under a work directory goes through this module: local paths use
the OS directly (made absolute, so messages name them fully); URLs
(``gs://``, ``s3://``, ...) go through `etils.epath` and its fsspec backend
(``pip install 'varrl_jax[gcs]'`` adds gcsfs). Orbax writes its arrays to
such URLs itself, through tensorstore.

Object stores have no append and no rename: `TextAppender` rewrites the
object, and `write_text` writes it in one request (an object appears whole
or not at all, which is what the local temp-file-and-rename gives).
"""

from __future__ import annotations

import io
import os
import shutil
import time

from etils import epath


def is_url(path: str) -> bool:
  """True for ``scheme://...`` paths (cloud storage), False for local ones."""
  return '://' in os.fspath(path)


def resolve(path: str) -> str:
  """A local path made absolute; a URL as given (without a trailing slash)."""
  path = os.fspath(path)
  return path.rstrip('/') if is_url(path) else os.path.abspath(path)


def join(path: str, *parts: str) -> str:
  if is_url(path):
    return '/'.join([os.fspath(path).rstrip('/'), *parts])
  return os.path.join(path, *parts)


def dirname(path: str) -> str:
  if is_url(path):
    return os.fspath(path).rstrip('/').rsplit('/', 1)[0]
  return os.path.dirname(os.path.abspath(path))


def _epath(path: str) -> epath.Path:
  return epath.Path(os.fspath(path))


def exists(path: str) -> bool:
  return _epath(path).exists() if is_url(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  return _epath(path).is_dir() if is_url(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
  return _epath(path).is_file() if is_url(path) else os.path.isfile(path)


def makedirs(path: str) -> None:
  """Creates ``path`` and its parents (object stores: nothing to do)."""
  if is_url(path):
    _epath(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
  if is_url(path):
    return sorted(p.name for p in _epath(path).iterdir())
  return sorted(os.listdir(path))


def rmtree(path: str) -> None:
  if is_url(path):
    _epath(path).rmtree()
  else:
    shutil.rmtree(path)


def read_text(path: str) -> str:
  if is_url(path):
    return _epath(path).read_text()
  with open(path) as f:
    return f.read()


def write_text(path: str, text: str) -> None:
  """Writes ``path`` whole: readers see the old content or the new, never half."""
  if is_url(path):
    _epath(path).write_text(text)
    return
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def write_bytes(path: str, data: bytes) -> None:
  if is_url(path):
    _epath(path).write_bytes(data)
    return
  with open(path, 'wb') as f:
    f.write(data)


def save_image(path: str, image) -> None:
  """Saves a PIL image; the format follows the file name's extension."""
  if not is_url(path):
    image.save(path)
    return
  from PIL import Image

  ext = os.path.splitext(path)[1].lower()
  buffer = io.BytesIO()
  image.save(buffer, format=Image.registered_extensions().get(ext, 'PNG'))
  write_bytes(path, buffer.getvalue())


class TextAppender:
  """Appends lines to a text file that may live in an object store.

  Local files are opened in append mode and flushed per call. An object
  cannot be appended to, so for a URL the file's content is kept in memory
  (read once at open, for a resumed run) and the whole object is rewritten
  by `flush`, at most once per ``min_interval_s`` unless forced: a few KB
  per logged step, so the rewrite stays cheap.
  """

  def __init__(self, path: str, min_interval_s: float = 30.0):
    self.path = path
    self._remote = is_url(path)
    self._min_interval = min_interval_s
    self._last_flush = float('-inf')
    self._dirty = False
    if self._remote:
      self._text = [read_text(path)] if exists(path) else []
      self._file = None
    else:
      self._file = open(path, 'a')

  def write(self, text: str) -> None:
    if self._file is not None:
      self._file.write(text)
    else:
      self._text.append(text)
      self._dirty = True

  def flush(self, force: bool = False) -> None:
    if self._file is not None:
      self._file.flush()
      return
    now = time.monotonic()
    if self._dirty and (force or now - self._last_flush >= self._min_interval):
      self._text = [''.join(self._text)]
      write_text(self.path, self._text[0])
      self._dirty, self._last_flush = False, now

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    else:
      self.flush(force=True)
