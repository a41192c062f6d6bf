"""A pool of OCR worker processes with deadlines, restarts and a cache.

The training process runs JAX, so workers are started with the ``spawn``
context (forking a process that holds XLA threads and device handles is
unsafe). Each worker builds its engine once from a picklable
``engine_factory`` (e.g. ``functools.partial(ocr.make_engine, 'easyocr')``)
and then reads one image at a time: sending single images keeps a crash or a
hang confined to the one image that caused it.

Failure handling, per image: a worker that dies (crash), takes longer than
``timeout_s`` on one image (hang) or raises gives that image
``OcrResult(failed=True, error=...)``; the worker is killed and restarted and
the event is counted in the batch stats. A crash or a hang may be the
machine's rather than the image's (a suspended laptop, a process stopped and
resumed, the OOM killer), so such an image is first read again, up to
``retries`` times, on a fresh worker (``ocr/retries``); an engine that
raises is not retried (the same image would raise again). Rewards map failed
results to their fallback value; training never sees an exception from a bad
image. Only setup errors raise (the engine factory failing in a worker, e.g.
missing weights).

Spawned workers re-import the main module (standard ``spawn`` behaviour),
so entry points keep their work under ``if __name__ == '__main__'``.

``num_workers=0`` runs the engine inline in the calling process: no
processes, no timeouts (a hang hangs the caller), exceptions still isolated.

Usage::

  with OcrPool(functools.partial(make_engine, 'easyocr'), num_workers=2) as pool:
    future = pool.submit_batch(images_bhw3)   # overlaps the next rollout
    ...
    results, stats = future.result()
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from varrl_jax.rewards.ocr import OcrEngine, OcrUnavailableError, validate_image
from varrl_jax.rewards.types import OcrResult

EngineFactory = Callable[[], OcrEngine]
Stats = dict[str, float]

STAT_KEYS = (
  'ocr/images',
  'ocr/engine_calls',
  'ocr/dedup_hits',
  'ocr/cache_hits',
  'ocr/failures',
  'ocr/invalid',
  'ocr/timeouts',
  'ocr/crashes',
  'ocr/errors',
  'ocr/restarts',
  'ocr/retries',
  'ocr/seconds',
  'ocr/images_per_s',
)
_STOP_GRACE_S = 1.0
_KILL_WAIT_S = 5.0
_PARENT_POLL_S = 1.0


class OcrPoolError(RuntimeError):
  """The pool cannot run at all (a worker could not build its engine)."""


def image_key(image: np.ndarray) -> str:
  """Content hash of an image: its bytes, dtype and shape."""
  h = hashlib.blake2b(digest_size=16)
  h.update(f'{image.dtype.str}{image.shape}'.encode())
  h.update(np.ascontiguousarray(image).data)
  return h.hexdigest()


def _as_image_list(images: Any) -> list[Any]:
  """Splits a [B, H, W, 3] array (numpy or jax) or a sequence into images."""
  if not isinstance(images, (list, tuple)):
    images = np.asarray(images)
    if images.ndim != 4:
      raise ValueError(f'images must be [B, H, W, 3], got shape {images.shape}')
  # Non-numpy arrays (jax) become numpy; anything else is left for
  # validate_image to reject as a failed result.
  return [
    x if isinstance(x, np.ndarray) or not hasattr(x, '__array__') else np.asarray(x)
    for x in images
  ]


def _exit_if_orphaned(parent_pid: int) -> None:
  # A worker stuck inside the engine never reads its pipe, so it would not
  # notice a SIGKILLed parent; this thread makes sure it does not linger.
  while True:
    time.sleep(_PARENT_POLL_S)
    if os.getppid() != parent_pid:
      os._exit(0)


def _worker_main(
  conn: multiprocessing.connection.Connection,
  engine_factory: EngineFactory,
  parent_pid: int,
) -> None:
  """Worker loop: build the engine, then answer (task_id, image) messages."""
  # Ctrl-C reaches the whole process group; the parent decides when workers
  # stop (it may want to checkpoint first), so they ignore it.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  threading.Thread(target=_exit_if_orphaned, args=(parent_pid,), daemon=True).start()
  try:
    engine = engine_factory()
  except BaseException as e:  # noqa: BLE001 - reported to the parent
    try:
      conn.send(('init_error', e))
    except Exception:  # noqa: BLE001 - the exception itself may not pickle
      conn.send(('init_error', RuntimeError(f'{type(e).__name__}: {e}')))
    return
  conn.send(('ready', os.getpid()))
  while True:
    try:
      message = conn.recv()
    except (EOFError, OSError):
      return
    if message is None:
      return
    task_id, image = message
    try:
      result = engine.read(image)
      if not isinstance(result, OcrResult):
        raise TypeError(f'engine returned {type(result).__name__}, not OcrResult')
    except Exception as e:  # noqa: BLE001 - reported, the parent restarts us
      conn.send(('error', task_id, f'{type(e).__name__}: {e}'))
    else:
      conn.send(('result', task_id, result))


@dataclasses.dataclass(eq=False)
class _Worker:
  """Parent-side handle of one worker process (one slot of the pool)."""

  process: Any = None  # multiprocessing.Process; None while the slot is down
  conn: multiprocessing.connection.Connection | None = None
  ready: bool = False
  start_deadline: float = float('inf')
  task: tuple[int, str] | None = None  # (task_id, image key) in flight
  task_deadline: float = float('inf')

  @property
  def alive(self) -> bool:
    return self.process is not None

  def stop(self, graceful: bool) -> None:
    """Ends the process (asking first if ``graceful``) and reaps it."""
    process, conn = self.process, self.conn
    self.process, self.conn, self.ready, self.task = None, None, False, None
    if process is None:
      return
    if graceful and conn is not None:
      try:
        conn.send(None)
      except (OSError, ValueError):
        pass
      _reap(process, _STOP_GRACE_S)
    if process.exitcode is None:
      process.kill()
      _reap(process, _KILL_WAIT_S)
    if conn is not None:
      conn.close()
    if process.exitcode is not None:  # close() refuses a running process
      process.close()


def _reap(process: Any, timeout_s: float) -> int | None:
  """Waits up to ``timeout_s`` for ``process`` to exit; its exit code.

  ``Process.join`` returns as soon as the sentinel pipe closes, which the
  kernel does slightly before the process can be reaped, so it may return
  with ``exitcode`` still None; poll until the exit status is in.
  """
  deadline = time.monotonic() + timeout_s
  process.join(timeout_s)
  while process.exitcode is None and time.monotonic() < deadline:
    time.sleep(0.005)
  return process.exitcode


def _stop_all(workers: list[_Worker]) -> None:
  # Module-level (not a method) so weakref.finalize holds no pool reference.
  for w in workers:
    w.stop(graceful=True)


def collect(futures) -> tuple[list[OcrResult], dict[str, float]]:
  """Waits for ``submit_batch`` futures in order: (all results, summed stats).

  Counts and seconds add up over the batches; the rate ``ocr/images_per_s``
  does not, so it is left out.
  """
  results: list[OcrResult] = []
  stats: dict[str, float] = {}
  for future in futures:
    batch_results, batch_stats = future.result()
    results.extend(batch_results)
    for name, value in batch_stats.items():
      if name != 'ocr/images_per_s':
        stats[name] = stats.get(name, 0.0) + float(value)
  return results, stats


class OcrPool:
  """Reads batches of images with ``num_workers`` OCR processes.

  Args:
    engine_factory: picklable zero-argument callable returning an engine;
      called once in each worker (and after each restart).
    num_workers: worker processes; 0 runs the engine inline.
    timeout_s: longest one image may take in a worker before the worker is
      considered hung, killed and restarted (the image is retried, then fails).
    batch_timeout_s: optional deadline for a whole ``read_batch`` call;
      images not read by then fail. None: no batch deadline.
    start_timeout_s: longest a worker may take to build its engine.
    cache_size: entries of the LRU result cache shared across calls (0 turns
      it off). Duplicates within one call are always read once.
    restart_on_error: restart a worker whose engine raised (its state is
      unknown after an exception); False keeps it running.
    max_restarts_per_batch: restarts allowed in one call before broken slots
      stay down until the next call, so an engine that fails on everything
      cannot turn one batch into an endless restart loop. Default
      ``2 * num_workers + 2``.
    retries: how many more times an image whose worker hung or crashed is
      read, on a restarted worker, before it fails (0: fails at once).
    wait_ready: block in the constructor until every worker is up.
  """

  def __init__(
    self,
    engine_factory: EngineFactory,
    num_workers: int = 2,
    timeout_s: float = 30.0,
    *,
    batch_timeout_s: float | None = None,
    start_timeout_s: float = 300.0,
    cache_size: int = 4096,
    restart_on_error: bool = True,
    max_restarts_per_batch: int | None = None,
    retries: int = 1,
    wait_ready: bool = False,
  ):
    if num_workers < 0:
      raise ValueError(f'num_workers must be >= 0, got {num_workers}')
    if retries < 0:
      raise ValueError(f'retries must be >= 0, got {retries}')
    self.retries = int(retries)
    # Per read_batch call (batches run one at a time, under _lock): images
    # waiting for a worker, and the failed tries of each image.
    self._pending: collections.deque[str] = collections.deque()
    self._tries: collections.Counter[str] = collections.Counter()
    self.engine_factory = engine_factory
    self.num_workers = num_workers
    self.timeout_s = float(timeout_s)
    self.batch_timeout_s = batch_timeout_s
    self.start_timeout_s = float(start_timeout_s)
    self.cache_size = int(cache_size)
    self.restart_on_error = restart_on_error
    self.max_restarts_per_batch = (
      2 * num_workers + 2 if max_restarts_per_batch is None else max_restarts_per_batch
    )
    self.totals: collections.Counter[str] = collections.Counter()
    self._cache: collections.OrderedDict[str, OcrResult] = collections.OrderedDict()
    self._lock = threading.Lock()
    self._executor: concurrent.futures.ThreadPoolExecutor | None = None
    self._closed = False
    self._next_task_id = 0
    self._inline_engine: OcrEngine | None = None
    self._ctx = multiprocessing.get_context('spawn')
    self._workers = [_Worker() for _ in range(num_workers)]
    # Runs on close(), garbage collection or interpreter exit, whichever
    # comes first, so no worker outlives the training process.
    self._finalizer = weakref.finalize(self, _stop_all, self._workers)
    if num_workers == 0:
      self._inline_engine = engine_factory()
    for w in self._workers:
      self._start(w)
    if wait_ready:
      self.wait_ready()

  # ---------------------------------------------------------------- public

  def read_batch(
    self, images: np.ndarray | Sequence[np.ndarray]
  ) -> tuple[list[OcrResult], Stats]:
    """OCRs ``images`` (uint8 [B, H, W, 3] or a list of [H, W, 3]).

    Returns one result per image, in order, and this call's stats (all of
    ``STAT_KEYS``, floats): ``ocr/images``, ``ocr/engine_calls`` (images
    actually OCR'd), ``ocr/dedup_hits`` (repeats within the call),
    ``ocr/cache_hits`` (LRU hits from earlier calls), ``ocr/failures`` (failed
    results, any cause), ``ocr/invalid``, ``ocr/timeouts``, ``ocr/crashes``,
    ``ocr/errors``, ``ocr/restarts``, ``ocr/retries`` (reads again after a
    hang or crash), ``ocr/seconds``, ``ocr/images_per_s``.
    """
    if self._closed:
      raise OcrPoolError('OcrPool is closed')
    with self._lock:
      return self._read_batch(_as_image_list(images))

  def submit_batch(
    self, images: np.ndarray | Sequence[np.ndarray]
  ) -> concurrent.futures.Future:
    """Starts ``read_batch(images)`` in a background thread.

    The images are copied first, so the caller may reuse its buffers.
    ``future.result()`` returns ``(results, stats)``. Batches run one after
    another in submission order.
    """
    if self._closed:
      raise OcrPoolError('OcrPool is closed')
    copies = [np.array(image, copy=True) for image in _as_image_list(images)]
    if self._executor is None:
      self._executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix='ocr-pool'
      )
    return self._executor.submit(self.read_batch, copies)

  def wait_ready(self, timeout_s: float | None = None) -> None:
    """Blocks until every worker has built its engine (raises if one fails)."""
    timeout_s = self.start_timeout_s if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    with self._lock:
      while any(w.alive and not w.ready for w in self._workers):
        stats: collections.Counter[str] = collections.Counter()
        self._poll({}, stats, deadline - time.monotonic())
        if time.monotonic() >= deadline:
          raise OcrPoolError(f'OCR workers not ready after {timeout_s} s')

  def close(self) -> None:
    """Stops the workers: a running submitted batch finishes first, queued
    ones are cancelled."""
    if self._closed:
      return
    self._closed = True
    if self._executor is not None:
      self._executor.shutdown(wait=True, cancel_futures=True)
    with self._lock:
      self._finalizer()

  def __enter__(self) -> OcrPool:
    return self

  def __exit__(self, *exc_info: object) -> None:
    self.close()

  @property
  def worker_pids(self) -> list[int | None]:
    return [w.process.pid if w.alive else None for w in self._workers]

  # -------------------------------------------------------------- internals

  def _start(self, w: _Worker) -> None:
    parent_conn, child_conn = self._ctx.Pipe(duplex=True)
    process = self._ctx.Process(
      target=_worker_main,
      args=(child_conn, self.engine_factory, os.getpid()),
      name='ocr-worker',
      daemon=True,
    )
    process.start()
    child_conn.close()
    w.process, w.conn, w.ready, w.task = process, parent_conn, False, None
    w.start_deadline = time.monotonic() + self.start_timeout_s

  def _restart(self, w: _Worker, stats: collections.Counter[str]) -> None:
    w.stop(graceful=False)
    if stats['ocr/restarts'] < self.max_restarts_per_batch:
      stats['ocr/restarts'] += 1
      self._start(w)
    else:
      logging.warning('OCR pool: restart budget of this batch spent; slot down')

  def _read_batch(self, images: list[np.ndarray]) -> tuple[list[OcrResult], Stats]:
    t0 = time.monotonic()
    # Every key is always present so logged metrics keep a fixed set.
    stats: collections.Counter[str] = collections.Counter(dict.fromkeys(STAT_KEYS, 0))
    stats['ocr/images'] = len(images)
    results: list[OcrResult | None] = [None] * len(images)
    keys: list[str | None] = [None] * len(images)
    todo: dict[str, np.ndarray] = {}
    # Cache hits are taken now: storing this call's results below may evict
    # them from a small LRU.
    read: dict[str, OcrResult] = {}
    for i, image in enumerate(images):
      error = validate_image(image)
      if error:
        results[i] = OcrResult(failed=True, error=error)
        stats['ocr/invalid'] += 1
        continue
      key = keys[i] = image_key(image)
      if key in todo:
        stats['ocr/dedup_hits'] += 1
      elif key in read:
        stats['ocr/cache_hits'] += 1
      elif key in self._cache:
        self._cache.move_to_end(key)
        read[key] = self._cache[key]
        stats['ocr/cache_hits'] += 1
      else:
        todo[key] = image
    stats['ocr/engine_calls'] = len(todo)

    if self.num_workers == 0:
      new = {key: self._read_inline(image, stats) for key, image in todo.items()}
    else:
      new = self._read_in_workers(todo, stats, t0)

    for key, result in new.items():
      if not result.failed and self.cache_size > 0:
        self._cache[key] = result
    while len(self._cache) > self.cache_size:
      self._cache.popitem(last=False)
    read.update(new)
    for i, key in enumerate(keys):
      if key is not None:
        results[i] = read[key]
    stats['ocr/failures'] = sum(r.failed for r in results)
    seconds = time.monotonic() - t0
    stats['ocr/seconds'] = seconds
    stats['ocr/images_per_s'] = len(images) / max(seconds, 1e-9)
    for k in (
      'ocr/failures',
      'ocr/timeouts',
      'ocr/crashes',
      'ocr/errors',
      'ocr/restarts',
      'ocr/retries',
    ):
      self.totals[k] += stats[k]
    return results, {k: float(v) for k, v in sorted(stats.items())}

  def _read_inline(
    self, image: np.ndarray, stats: collections.Counter[str]
  ) -> OcrResult:
    try:
      result = self._inline_engine.read(image)
      if not isinstance(result, OcrResult):
        raise TypeError(f'engine returned {type(result).__name__}, not OcrResult')
      return result
    except Exception as e:  # noqa: BLE001 - one bad read must not stop training
      stats['ocr/errors'] += 1
      return OcrResult(failed=True, error=f'engine raised {type(e).__name__}: {e}')

  def _read_in_workers(
    self, todo: dict[str, np.ndarray], stats: collections.Counter[str], t0: float
  ) -> dict[str, OcrResult]:
    for w in self._workers:
      if not w.alive:  # left down by an earlier batch's restart budget
        self._start(w)
    pending = self._pending = collections.deque(todo)
    self._tries = collections.Counter()
    read: dict[str, OcrResult] = {}
    batch_deadline = (
      float('inf') if self.batch_timeout_s is None else t0 + self.batch_timeout_s
    )
    while pending or any(w.task for w in self._workers):
      self._dispatch(todo, pending)
      if not any(w.alive for w in self._workers):
        for key in pending:
          read[key] = OcrResult(failed=True, error='no OCR worker left in this batch')
        break
      self._poll(read, stats, batch_deadline - time.monotonic())
      if time.monotonic() >= batch_deadline:
        for w in self._workers:
          if w.task is not None:
            read[w.task[1]] = OcrResult(
              failed=True, error=f'batch deadline of {self.batch_timeout_s} s'
            )
            stats['ocr/timeouts'] += 1
            self._restart(w, stats)
        for key in pending:
          read[key] = OcrResult(
            failed=True, error=f'batch deadline of {self.batch_timeout_s} s'
          )
        break
    return read

  def _dispatch(self, todo: dict[str, np.ndarray], pending: collections.deque) -> None:
    for w in self._workers:
      if not pending:
        return
      if not (w.alive and w.ready and w.task is None):
        continue
      key = pending.popleft()
      task_id = self._next_task_id
      self._next_task_id += 1
      try:
        w.conn.send((task_id, todo[key]))
      except (OSError, ValueError):
        # Died before taking the image: not the image's fault, so requeue it;
        # the sentinel reports the death on the next poll.
        pending.appendleft(key)
        continue
      w.task = (task_id, key)
      w.task_deadline = time.monotonic() + self.timeout_s

  def _poll(
    self, read: dict[str, OcrResult], stats: collections.Counter[str], max_wait_s: float
  ) -> None:
    """Waits for events (messages, deaths, deadlines) and handles them."""
    live = [w for w in self._workers if w.alive]
    deadlines = [w.task_deadline for w in live if w.task is not None]
    deadlines += [w.start_deadline for w in live if not w.ready]
    wait_s = min([max_wait_s, *(d - time.monotonic() for d in deadlines)])
    handles = [w.conn for w in live] + [w.process.sentinel for w in live]
    timeout = None if wait_s == float('inf') else max(0.0, wait_s)
    ready = set(multiprocessing.connection.wait(handles, timeout))
    for w in live:
      # A message sent just before dying is still read: a worker that wrote
      # its result and then crashed has done its job for that image.
      if w.conn in ready or (w.process.sentinel in ready and w.conn.poll()):
        try:
          message = w.conn.recv()
        except (EOFError, OSError):  # pipe closed: the process is exiting
          self._on_death(w, read, stats)
          continue
        self._on_message(w, message, read, stats)
      elif w.process.sentinel in ready:
        self._on_death(w, read, stats)
    now = time.monotonic()
    for w in self._workers:
      if w.alive and not w.ready and now >= w.start_deadline:
        w.stop(graceful=False)
        raise OcrPoolError(f'OCR worker did not start within {self.start_timeout_s} s')
      if w.alive and w.task is not None and now >= w.task_deadline:
        logging.warning('OCR pool: worker hung > %.1f s; restarting it', self.timeout_s)
        self._retry_or_fail(
          w.task[1], f'OCR timed out after {self.timeout_s} s', read, stats
        )
        stats['ocr/timeouts'] += 1
        self._restart(w, stats)

  def _on_message(
    self,
    w: _Worker,
    message: tuple,
    read: dict[str, OcrResult],
    stats: collections.Counter[str],
  ) -> None:
    kind = message[0]
    if kind == 'ready':
      w.ready = True
    elif kind == 'init_error':
      error = message[1]
      w.stop(graceful=False)
      if isinstance(error, OcrUnavailableError):
        raise error
      raise OcrPoolError(
        f'OCR worker could not build its engine: {type(error).__name__}: {error}'
      ) from error
    elif w.task is not None and message[1] == w.task[0]:
      key = w.task[1]
      w.task = None
      if kind == 'result':
        read[key] = message[2]
        return
      logging.warning('OCR pool: engine raised: %s', message[2])
      read[key] = OcrResult(failed=True, error=f'engine raised {message[2]}')
      stats['ocr/errors'] += 1
      if self.restart_on_error:
        self._restart(w, stats)

  def _retry_or_fail(
    self, key: str, error: str, read: dict[str, OcrResult], stats
  ) -> None:
    """After a hang or crash on image ``key``: queue it again, or fail it."""
    if self._tries[key] < self.retries:
      self._tries[key] += 1
      stats['ocr/retries'] += 1
      self._pending.append(key)
    else:
      read[key] = OcrResult(failed=True, error=error)

  def _on_death(
    self, w: _Worker, read: dict[str, OcrResult], stats: collections.Counter[str]
  ) -> None:
    code = _reap(w.process, _STOP_GRACE_S)
    if not w.ready:
      w.stop(graceful=False)
      raise OcrPoolError(f'OCR worker exited with code {code} while starting')
    if w.task is not None:
      logging.warning('OCR pool: worker died (exit code %s); restarting it', code)
      self._retry_or_fail(
        w.task[1], f'OCR worker crashed (exit code {code})', read, stats
      )
    stats['ocr/crashes'] += 1
    self._restart(w, stats)
