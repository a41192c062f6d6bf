"""Batch-shape sanity of an RL config, checked before anything compiles.

One update samples P prompts (``config.rl.prompts_per_update``) x G samples
(``config.rl.group_size``) x K suffix branches (``config.rl.vmr.num_branches``;
K = 1 in 'vanilla' mode), in C equal chunks (``config.rl.rollout_chunks``):

  prompts per chunk            P / C                 (C must divide P)
  rows per sampler call        S = (P / C) G         prefix / full-horizon call
  rows of the branch call      S K
  rows of the GRPO step        P G (prefix phase, full) or P G K (suffix)
  rows of one micro-batch      P G / M  (M = ``config.rl.train_microbatches``)

Every row batch is split over the mesh's data axes, D = data x fsdp devices
(`parallel.batch_sharding`); all of them are multiples of S, so S % D == 0
is the one device condition for sampling; the GRPO step's micro-batches
need P G / M % D == 0 (then P G K / M divides too). The processes need none of their own: each
holds whole row blocks of the data axes or replicas of them
(`distributed.local_rows`), so a batch that divides over D is shared by
the processes however they split the mesh. The held-out evaluation samples
``config.eval.batch_size`` rows per call, which must divide over D too
(otherwise the evaluator drops the mesh and runs on one device).

`check_batches` raises ValueError with one line naming the keys and numbers.
"""

from __future__ import annotations

import dataclasses

from varrl_jax import parallel


@dataclasses.dataclass(frozen=True)
class BatchShape:
  """The row counts of one update (module docstring)."""

  prompts_per_chunk: int  # P / C
  rows_per_chunk: int  # S = (P / C) G
  rows_per_update: int  # P G K
  data_devices: int  # D = data x fsdp


_POSITIVE = (
  'rl.prompts_per_update',
  'rl.group_size',
  'rl.rollout_chunks',
  'rl.vmr.num_branches',
  'eval.batch_size',
  'rl.train_microbatches',
)


def _get(config, key: str) -> int:
  value = config
  for part in key.split('.'):
    value = value[part]
  return value


def check_batches(
  config, num_devices: int | None = None, num_processes: int | None = None
) -> BatchShape:
  """Checks the batch shapes of ``config`` on ``num_devices`` devices in
  ``num_processes`` processes (default: this job's); returns them.

  Raises ValueError (one line naming keys and numbers) if P is not divisible
  by C, S = (P / C) G or config.eval.batch_size does not divide over
  D = data x fsdp devices, or a count is not a positive integer; the mesh
  itself is checked by `parallel.mesh_shape`.
  """
  if num_devices is None or num_processes is None:
    import jax

    num_devices = jax.device_count() if num_devices is None else num_devices
    num_processes = jax.process_count() if num_processes is None else num_processes
  for key in _POSITIVE:
    value = _get(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f'config.{key}={value!r}: expected a positive integer')
  if num_devices % num_processes:
    raise ValueError(
      f'{num_devices} devices do not split evenly over {num_processes} processes'
    )
  rl = config.rl
  p, g, c = rl.prompts_per_update, rl.group_size, rl.rollout_chunks
  k = 1 if rl.mode == 'vanilla' else rl.vmr.num_branches
  if p % c:
    raise ValueError(
      f'config.rl.prompts_per_update={p} is not divisible by '
      f'config.rl.rollout_chunks={c}'
    )
  data, fsdp, _ = parallel.mesh_shape(config.mesh, num_devices)
  d = data * fsdp
  mesh = f'config.mesh data x fsdp = {data} x {fsdp} = {d} devices'
  s = p // c * g
  if s % d:
    raise ValueError(
      f'rollout chunk of config.rl.prompts_per_update={p} / '
      f'config.rl.rollout_chunks={c} x config.rl.group_size={g} = {s} rows does '
      f'not divide over {mesh} (of {num_devices} in {num_processes} processes)'
    )
  m = rl.train_microbatches
  if (p * g) % (m * d):
    raise ValueError(
      f'GRPO step of config.rl.prompts_per_update={p} x config.rl.group_size={g} '
      f'= {p * g} rows does not split into config.rl.train_microbatches={m} '
      f'micro-batches that divide over {mesh}'
    )
  if config.eval.batch_size % d:
    raise ValueError(
      f'config.eval.batch_size={config.eval.batch_size} does not divide over '
      f'{mesh} (of {num_devices} in {num_processes} processes)'
    )
  return BatchShape(p // c, s, p * g * k, d)
