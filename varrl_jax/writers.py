"""Scalar metrics to ``metrics.jsonl`` and TensorBoard, from process 0 only.

One JSON object per logged step (``{"step": 100, "loss": 0.31, ...}``), easy
to read back with pandas or `read_jsonl`; the same scalars go to a
tensorboardX event file in the same folder. ``logdir`` may be a ``gs://``
URL (see `varrl_jax.fs`; tensorboardX writes there with
google-cloud-storage). Other processes of a multi-host
job get a writer that does nothing, so callers need no ``if``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping

import jax

from varrl_jax import fs


class MetricWriter:
  """Appends scalar metrics to ``logdir/metrics.jsonl`` and TensorBoard."""

  def __init__(self, logdir: str, tensorboard: bool = True):
    self.logdir = logdir
    self.enabled = jax.process_index() == 0
    self._tb = None
    self._file = None
    if not self.enabled:
      return
    fs.makedirs(logdir)
    self._file = fs.TextAppender(fs.join(logdir, 'metrics.jsonl'))
    if tensorboard:
      # Imported here: it costs seconds and only writers need it.
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(logdir)

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in metrics.items()}
    # NaN/inf are not JSON: write them as strings so the file stays valid.
    record = {k: (v if math.isfinite(v) else str(v)) for k, v in sorted(values.items())}
    self._file.write(json.dumps({'step': int(step), 'time': time.time(), **record}))
    self._file.write('\n')
    self._file.flush()
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, v, int(step))
      self._tb.flush()

  def resume_at(self, step: int) -> None:
    """Drops the records of steps >= ``step`` from ``metrics.jsonl``: a run
    resumed at update ``step`` (after a preemption, or from an older state
    when the newest was unreadable) logs those updates again, once. The
    file is rewritten whole (readers see the old or the new one)."""
    if not self.enabled:
      return
    path = fs.join(self.logdir, 'metrics.jsonl')
    self._file.close()
    if fs.exists(path):
      lines = [line for line in fs.read_text(path).splitlines() if line.strip()]
      kept = [line for line in lines if _step_of(line) < step]
      if len(kept) < len(lines):
        fs.write_text(path, ''.join(line + '\n' for line in kept))
    self._file = fs.TextAppender(path)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _step_of(line: str) -> float:
  """The step of a metrics.jsonl line; inf for a torn or foreign line (a
  crash mid-write), which a resume then drops."""
  try:
    return float(json.loads(line)['step'])
  except (ValueError, KeyError, TypeError):
    return float('inf')


def read_jsonl(path: str) -> list[dict]:
  """All records of a ``metrics.jsonl`` file."""
  return [json.loads(line) for line in fs.read_text(path).splitlines() if line.strip()]


def last_per_step(path: str, keep=lambda rec: True) -> dict[int, dict]:
  """step -> the last record of that step in a ``metrics.jsonl`` file among
  those ``keep`` accepts (a resumed run logs a step again; a torn or foreign
  line is skipped). {} when the file does not exist."""
  if not fs.exists(path):
    return {}
  by_step = {}
  for line in fs.read_text(path).splitlines():
    try:
      rec = json.loads(line)
    except ValueError:
      continue
    if isinstance(rec, dict) and 'step' in rec and keep(rec):
      by_step[int(rec['step'])] = rec
  return by_step
