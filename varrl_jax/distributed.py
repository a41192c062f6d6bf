"""Multi-host jobs: starting JAX's distributed runtime, and per-host data.

A job of N processes (one per TPU VM worker; N local CPU processes in the
tests) runs the same command. `initialize` starts ``jax.distributed`` from
``config.distributed`` (or the environment, or JAX's cluster detection on
Cloud TPU VMs, SLURM and Open MPI); one process needs nothing.

Arrays whose rows are split over ('data', 'fsdp') live partly in each
process. OCR runs where the images are: `local_rows` gives a process its own
rows, the small per-row results are all-gathered (`allgather_rows`,
`allgather_boxes`), so every process then holds the same rewards, advantages
and masks and feeds the same global batch to the step. With one process all
of this is the identity.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

MODES = ('auto', 'on', 'off')


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, '')
  return int(value) if value else None


def initialize(config: ml_collections.ConfigDict) -> bool:
  """Starts ``jax.distributed`` as ``config.distributed`` says; True if it did.

  Must run before any JAX computation. The coordinator address, the number
  of processes and this process's id come from the config, else from the
  environment (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
  ``JAX_PROCESS_ID``), else from JAX's cluster detection. Mode 'auto' runs
  as one process when nothing is configured or detected; 'on' requires a
  multi-process start; 'off' never starts it. One process is a no-op.
  """
  d = config.distributed
  if d.mode not in MODES:
    raise ValueError(f'config.distributed.mode must be one of {MODES}, got {d.mode!r}')
  if d.mode == 'off':
    return False
  if jax.distributed.is_initialized():
    return True
  address = d.coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS', '')
  num = d.num_processes if d.num_processes >= 0 else _env_int('JAX_NUM_PROCESSES')
  pid = d.process_id if d.process_id >= 0 else _env_int('JAX_PROCESS_ID')
  if num == 1:
    return False
  explicit = bool(address) or num is not None or pid is not None
  try:
    jax.distributed.initialize(
      coordinator_address=address or None,
      num_processes=num,
      process_id=pid,
      initialization_timeout=int(d.timeout_s),
    )
  except ValueError as e:
    # Nothing configured and no cluster detected: a one-process job.
    if explicit or d.mode == 'on' or 'coordinator_address' not in str(e):
      raise
    return False
  logging.info(
    'jax.distributed: process %d of %d, %d local of %d devices',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def is_main() -> bool:
  """The process that writes metrics, images and reports (process 0)."""
  return jax.process_index() == 0


def to_host(x) -> np.ndarray:
  """The whole value of ``x`` as numpy in every process (all-gathered when
  its shards live in several processes)."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def local_rows(x) -> tuple[np.ndarray, np.ndarray]:
  """(rows, index): the rows of ``x`` held by this process and their global
  row numbers, in increasing order.

  Replicas of a row (the 'tensor' axis) count once. An array that is not
  split by rows alone is all-gathered and every row is local.
  """
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    a = np.asarray(x)
    return a, np.arange(a.shape[0])
  blocks = {}
  for shard in x.addressable_shards:
    spans = [s.indices(n) for s, n in zip(shard.index, x.shape)]
    if any(span != (0, n, 1) for span, n in zip(spans[1:], x.shape[1:])):
      a = to_host(x)
      return a, np.arange(a.shape[0])
    start, stop, _ = spans[0]
    blocks.setdefault(start, (stop, shard.data))
  starts = sorted(blocks)
  rows = np.concatenate([np.asarray(blocks[s][1]) for s in starts])
  index = np.concatenate([np.arange(s, blocks[s][0]) for s in starts])
  return rows, index


def _covers_in_order(index: np.ndarray, total: int) -> bool:
  return len(index) == total and bool((index == np.arange(total)).all())


def allgather_rows(local: np.ndarray, index: np.ndarray, total: int) -> np.ndarray:
  """[total, ...] in every process from each process's ``local`` rows, which
  are rows ``index`` of the whole (every row must come from some process).
  Values travel exactly (dtypes JAX keeps: up to 32 bits)."""
  local = np.asarray(local)
  if jax.process_count() == 1 and _covers_in_order(index, total):
    return local
  values = np.asarray(multihost_utils.process_allgather(local))
  indices = np.asarray(multihost_utils.process_allgather(np.asarray(index, np.int32)))
  values = values.reshape(-1, *local.shape[1:])
  indices = indices.reshape(-1)
  if not np.isin(np.arange(total), indices).all():
    raise ValueError(
      f'allgather_rows: rows {sorted(set(range(total)) - set(indices))} are missing'
    )
  out = np.zeros((total, *local.shape[1:]), local.dtype)
  out[indices] = values
  return out


def allgather_boxes(
  boxes: Sequence[Sequence[Sequence[float]]], index: np.ndarray, total: int
) -> list[list[tuple[float, ...]]]:
  """Per-row box lists of the whole batch in every process (see
  `allgather_rows`); coordinates travel bit-exactly (float64 as int32 pairs)."""
  if jax.process_count() == 1 and _covers_in_order(index, total):
    return [list(b) for b in boxes]
  count = np.asarray([len(b) for b in boxes], np.int32)
  widest = int(
    np.asarray(multihost_utils.process_allgather(count.max(initial=0))).max()
  )
  padded = np.zeros((len(boxes), max(widest, 1), 4), np.float64)
  for r, row in enumerate(boxes):
    if len(row):
      padded[r, : len(row)] = np.asarray(row, np.float64)
  count = allgather_rows(count, index, total)
  bits = allgather_rows(padded.view(np.int32), index, total)
  coords = np.ascontiguousarray(bits).view(np.float64)
  return [
    [tuple(float(v) for v in coords[r, j]) for j in range(count[r])]
    for r in range(total)
  ]


def sum_stats(stats: dict[str, float]) -> dict[str, float]:
  """Counters summed over the processes (same keys in every process)."""
  if jax.process_count() == 1:
    return stats
  keys = sorted(stats)
  values = np.asarray([float(stats[k]) for k in keys], np.float32)
  total = np.asarray(multihost_utils.process_allgather(values)).sum(0)
  return {k: float(v) for k, v in zip(keys, total)}
