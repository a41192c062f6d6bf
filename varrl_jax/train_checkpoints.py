"""The full RL train state, for exact resume.

`TrainCheckpoints` keeps the *full* RL train state for exact resume behind an
orbax ``CheckpointManager`` (``WORKDIR/checkpoints/state/<update>/``): the
GRPO `TrainState` (params, optimizer state, step) and a JSON record of
everything else the run's future depends on: the next update index (which
fixes the prompt-stream position, the rollout key ``fold_in(key, update)``
and the alternation phase), the seed, the reference-params source and a
fingerprint of the reference. Restoring targets the abstract state of the
*current* run, with its shardings, so a state saved on one mesh restores
onto another. A latest step that cannot be read (a damaged array file, a
record that is not JSON or names another update) falls back to the previous
one with a warning; when none can, the error lists each step's problem and
deletes nothing.
"""

from __future__ import annotations

import contextlib
import gc
import logging as std_logging
import sys
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from varrl_jax import fs
from varrl_jax.checkpoint import CheckpointError, _first_line

# Bumped when `fingerprint` changes: digests of two versions are not compared.
FINGERPRINT_VERSION = 2


def _fmix32(h):
  """MurmurHash3's 32-bit finalizer: mixes every input bit into every output
  bit (uint32 arithmetic, wrapping)."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _leaf_checksums(x):
  """Two uint32 checksums of an array's exact bits: the sum of its words,
  and the sum of ``fmix32(word ^ fmix32(i))`` over the row-major index i.

  Integer sums modulo 2**32 do not depend on the order of the additions, so
  the result is the same on any mesh, any device and any backend (float
  sums are not: each split of a reduction rounds differently, which made the
  old float-moment digest differ between meshes and between GPU runs). Any
  change of one element changes the first sum; the second ties each word to
  its position, so a swap or any rearrangement changes it except by a
  2**-32 chance.
  """
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint8)
  else:
    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[
      x.dtype.itemsize
    ]
    # 8-byte types become [..., 2] uint32 words.
    bits = jax.lax.bitcast_convert_type(x, width)
  bits = bits.astype(jnp.uint32)
  index = jnp.zeros(bits.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(bits.ndim)):
    iota = jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis)
    index = index + iota * jnp.uint32(stride % 2**32)
    stride *= bits.shape[axis]
  placed = _fmix32(bits ^ _fmix32(index))
  return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(placed, dtype=jnp.uint32)])


def fingerprint(tree) -> str:
  """A short digest of a pytree of (possibly sharded) arrays.

  Hashes each leaf's path, shape, dtype and two integer checksums of its
  bits, computed on device (cheap at any size; every process gets the same
  replicated scalars). Equal values give equal digests whatever the
  sharding, mesh or backend, so a state saved on one mesh resumes on
  another; it tells different weights apart, it is not a cryptographic hash.
  """
  import hashlib

  sums = jax.jit(lambda t: jax.tree.map(_leaf_checksums, t))(tree)
  h = hashlib.blake2b(digest_size=8)
  for (path, leaf), m in zip(
    jax.tree_util.tree_flatten_with_path(tree)[0], jax.tree.leaves(sums)
  ):
    h.update(f'{jax.tree_util.keystr(path)}{tuple(leaf.shape)}{leaf.dtype}'.encode())
    h.update(np.asarray(m, np.uint32).tobytes())
  return h.hexdigest()


class _DropUnretrievedReads(std_logging.Filter):
  """Drops asyncio's 'exception was never retrieved' for orbax's reads only."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (
      'exception was never retrieved' in message
      and ('orbax' in message or 'tensorstore' in message)
    )


@contextlib.contextmanager
def _quiet_failed_reads():
  """Keeps the reports of a restore that failed on a corrupt file off stderr.

  Such a restore leaves tensorstore reads in flight: orbax closes the event
  loop of the call, each read that completes later reports
  RuntimeError('Event loop is closed') through ``sys.unraisablehook``, and
  each abandoned read task logs 'exception was never retrieved' when it is
  collected: hundreds of tracebacks around the one-line error. Both kinds
  may come after the block, when a read that was still in flight completes
  and dies, so both are dropped from now on; any other report still reaches
  the previous hook or the 'asyncio' logger.
  """
  previous = sys.unraisablehook
  if not getattr(previous, 'quiet_closed_loop', False):

    def hook(unraisable):
      e = unraisable.exc_value
      if not (isinstance(e, RuntimeError) and str(e) == 'Event loop is closed'):
        previous(unraisable)

    hook.quiet_closed_loop = True
    sys.unraisablehook = hook
  log = std_logging.getLogger('asyncio')
  if not any(isinstance(f, _DropUnretrievedReads) for f in log.filters):
    log.addFilter(_DropUnretrievedReads())
  try:
    yield
  finally:
    gc.collect()  # most abandoned tasks report now rather than at exit


def _record_problem(step: int, record: Any) -> str | None:
  """Why the JSON record of train checkpoint ``step`` cannot be resumed from
  (a hand-edited or foreign file), or None."""
  if not isinstance(record, Mapping):
    return f'record is a {type(record).__name__}, not a JSON object'
  update = record.get('update')
  if type(update) is not int or update != step:
    return f'record has update {update!r}, not {step}'
  return None


class TrainCheckpoints:
  """Save / restore the RL train state under ``directory`` (see module doc).

  Saves are synchronous: a save that returned is on disk, so a preempted job
  (SIGTERM) can save and exit inside its grace period.
  """

  def __init__(self, directory: str, keep: int):
    self.directory = fs.resolve(directory)
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max(1, int(keep)), create=True, enable_async_checkpointing=False
      ),
      item_names=('state', 'record'),
    )

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, update: int, state, record: Mapping[str, Any]) -> str:
    """Writes the state reached *before* update ``update`` (the next one to run)."""
    if update in self._manager.all_steps():
      # A resumed run redoes steps after an unreadable one: replace it.
      self._manager.delete(update)
    self._manager.save(
      update,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        record=ocp.args.JsonSave(dict(record, update=int(update))),
      ),
      force=True,
    )
    self._manager.wait_until_finished()
    return fs.join(self.directory, str(update))

  def restore_latest(self, abstract_state) -> tuple[Any, dict] | None:
    """(state, record) of the newest readable step, else None if there is none.

    ``abstract_state``: the current run's state (arrays or ShapeDtypeStructs
    with shardings); restored arrays take its shapes, dtypes and shardings.
    Unreadable steps (a crash mid-save, a corrupt file) are skipped with a
    warning; if none is readable, CheckpointError.
    """
    target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=getattr(x, 'sharding', None)
      ),
      abstract_state,
    )
    steps = self.steps()
    problems = []
    # Around the whole loop: a failed restore reports when its exception dies.
    with _quiet_failed_reads():
      for step in reversed(steps):
        try:
          out = self._manager.restore(
            step,
            args=ocp.args.Composite(
              state=ocp.args.StandardRestore(target),
              record=ocp.args.JsonRestore(),
            ),
          )
        except Exception as e:  # orbax/tensorstore raise many types on bad files
          problem = _first_line(e)
        else:
          problem = _record_problem(step, out.record)
          if problem is None:
            return out.state, dict(out.record)
        problems.append(f'{step}: {problem[:150]}')
        logging.warning(
          'train checkpoint %s/%d is unreadable (%s); trying the previous one',
          self.directory,
          step,
          problem,
        )
    if steps:
      raise CheckpointError(
        f'{self.directory}: no readable train checkpoint ({"; ".join(problems)}); '
        'delete the directory to start over'
      )
    return None

  def latest_record(self) -> dict | None:
    """The JSON record of the newest step whose record reads (None if none):
    what a resume checks before restoring a state of another structure."""
    for step in reversed(self.steps()):
      try:
        out = self._manager.restore(
          step, args=ocp.args.Composite(record=ocp.args.JsonRestore())
        )
      except Exception:  # an unreadable step: restore_latest reports it
        continue
      if _record_problem(step, out.record) is None:
        return dict(out.record)
    return None

  def close(self) -> None:
    self._manager.close()
