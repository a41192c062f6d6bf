r"""Ahead-of-time compile for a TPU topology on a CPU host: HBM fit and roofline.

  pip install -e ".[tpu]"
  python -m varrl_jax.aot --config=configs/cvtg.py --topology=v5p-128

libtpu describes the devices of a TPU slice without one
(`jax.experimental.topologies`); the project's mesh (``config.mesh``) is
laid over them and the two device programs of an RL update are lowered with
abstract, sharded inputs (`jax.ShapeDtypeStruct`: no parameter is ever
allocated) and compiled by the real TPU compiler:

- ``train_step``: the GRPO step (`rl.grpo.make_train_step`) on its largest
  batch, ``rl.prompts_per_update x rl.group_size`` sequences of the full
  length, times K (``rl.vmr.num_branches``) for the suffix steps of VMR;
- ``sample``: the KV-cached sampler (`Sampler.program('sample')`) on one
  rollout chunk, ``rl.prompts_per_update / rl.rollout_chunks x group_size``
  prompts.

With LoRA (``config.rl.lora.rank > 0``, `rl.lora`) the train step's state is
the adapters and their optimizer state, and the frozen base (which is also
the KL reference) is an argument of the step; the sampler runs on merged
params while the base, adapters and their optimizer state stay resident.

For each, a table (`aot_report`): per-chip HBM from
``compiled.memory_analysis()``, plus the buffers that stay resident while it
runs (the frozen reference parameters; for the sampler also the optimizer
state), against the chip's capacity; FLOPs, HBM and collective bytes, the
roofline time, what bounds it, and the MFU bound (model FLOPs / (roofline x
peak)); for the train step also that of a whole RL update (reference
forward + ``rl.inner_updates`` steps). A program the TPU compiler refuses
for lack of HBM is reported with the temporaries it asked for. The last line
is the verdict, ``fit: yes (...)`` or ``fit: NO (...)`` (exit code 1).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import sys
import time
from collections.abc import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from varrl_jax import cli, parallel
from varrl_jax.aot_report import report
from varrl_jax.models import flops
from varrl_jax.models.family import build_model
from varrl_jax.policy import SamplingOptions
from varrl_jax.rl import batch_check

# Flags are defined only when run as a program: importing this module (the
# tests do) next to another CLI module must not define --config twice.
_CONFIG = None
_TOPOLOGY = None
_PROGRAMS = None
PROGRAMS = ('train_step', 'sample')


def _define_flags():
  global _CONFIG, _TOPOLOGY, _PROGRAMS
  _CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file.', lock_config=True
  )
  _TOPOLOGY = flags.DEFINE_string(
    'topology',
    None,
    'TPU slice: v5p-N (N TensorCores, 2 per chip), v5e-N / v6e-N (N chips), '
    'or a libtpu name like v5p:4x4x4.',
  )
  _PROGRAMS = flags.DEFINE_multi_enum(
    'programs',
    list(PROGRAMS),
    PROGRAMS,
    'Which programs to compile (repeat the flag; default both).',
  )


@dataclasses.dataclass(frozen=True)
class Chip:
  """Per-chip capacity and peaks (Google Cloud TPU spec sheets, bf16)."""

  name: str
  hbm_gib: float
  peak_tflops: float
  hbm_gbps: float
  ici_gbps: float  # inter-chip interconnect, all links of a chip, GB/s


# | generation | HBM / chip | bf16 peak   | HBM bandwidth | ICI           |
# | v5p        | 95 GiB     | 459 TFLOP/s | 2765 GB/s     | 4800 Gbit/s   |
# | v5e        | 16 GiB     | 197 TFLOP/s |  819 GB/s     | 1600 Gbit/s   |
# | v6e        | 32 GiB     | 918 TFLOP/s | 1640 GB/s     | 3584 Gbit/s   |
# A v5p chip is one megacore device (its 2 TensorCores count as one).
CHIPS = {
  'v5p': Chip('TPU v5p', 95.0, 459.0, 2765.0, 600.0),
  'v5e': Chip('TPU v5e', 16.0, 197.0, 819.0, 200.0),
  'v6e': Chip('TPU v6e', 32.0, 918.0, 1640.0, 448.0),
}

# Chip grids of the slice sizes Cloud TPU sells, by chip count.
_GRIDS_3D = {
  4: '2x2x1',
  8: '2x2x2',
  16: '2x2x4',
  32: '2x4x4',
  64: '4x4x4',
  128: '4x4x8',
  256: '4x8x8',
  512: '8x8x8',
}
_GRIDS_2D = {
  1: '1x1',
  4: '2x2',
  8: '2x4',
  16: '4x4',
  32: '4x8',
  64: '8x8',
  128: '8x16',
  256: '16x16',
}


class TopologyError(ValueError):
  """An unknown topology name, or libtpu missing."""


def parse_topology(name: str) -> tuple[str, str]:
  """(generation, libtpu topology name), e.g. 'v5p-128' -> ('v5p', 'v5p:4x4x4')."""
  known = ', '.join(
    [f'v5p-{2 * n}' for n in _GRIDS_3D] + [f'v5e-{n}' for n in _GRIDS_2D] + ['v6e-N']
  )
  if ':' in name:
    gen, grid = name.split(':', 1)
    dims = grid.split('x')
    if gen in CHIPS and all(d.isdigit() for d in dims) and len(dims) in (2, 3):
      return gen, name
  elif '-' in name:
    gen, count = name.split('-', 1)
    if gen in CHIPS and count.isdigit():
      n = int(count)
      grid = _GRIDS_3D.get(n // 2) if gen == 'v5p' and n % 2 == 0 else None
      grid = _GRIDS_2D.get(n) if gen != 'v5p' else grid
      if grid:
        return gen, f'{gen}:{grid}'
  raise TopologyError(f'unknown --topology={name!r}; known: {known}, or e.g. v5p:4x4x4')


def tpu_devices(topology: str) -> tuple[Chip, str, list]:
  """(chip, libtpu name, devices) of a TPU slice, described by libtpu on this host."""
  gen, name = parse_topology(topology)
  if importlib.util.find_spec('libtpu') is None:
    raise TopologyError(
      'libtpu is not installed (needed to compile for TPU on this host): '
      'pip install -e ".[tpu]"'
    )
  dims = [int(d) for d in name.split(':')[1].split('x')]
  chips = int(np.prod(dims))
  # Off a TPU VM libtpu logs that it cannot find its own accelerator; say
  # what slice this is (a TPU VM's own settings are kept).
  os.environ.setdefault(
    'TPU_ACCELERATOR_TYPE', f'{gen}-{2 * chips if gen == "v5p" else chips}'
  )
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  # Any JAX process of this environment that probed for a TPU holds libtpu's
  # lock file; describing a topology needs no TPU, so share the library.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  from jax.experimental import topologies

  bounds = tuple(min(2, d) for d in dims) + (1,) * (3 - len(dims))
  desc = topologies.get_topology_desc(
    platform='tpu',
    topology_name=name,
    chip_config_name='default',
    chips_per_host_bounds=bounds,
    num_slices=1,
  )
  return CHIPS[gen], name, list(desc.devices)


# -- abstract, sharded inputs -------------------------------------------------


def _sds(tree, shardings):
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )


def _bytes_per_device(tree) -> int:
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape)
    total += int(np.prod(shape)) * jnp.dtype(x.dtype).itemsize
  return total


def _batch_input(mesh, shape, dtype, batch: int):
  """Split over ('data', 'fsdp') when the rows divide, else replicated."""
  rows = mesh.shape['data'] * mesh.shape['fsdp']
  if len(shape) and shape[0] == batch and batch % rows == 0:
    s = parallel.batch_sharding(mesh, len(shape))
  else:
    s = parallel.replicated(mesh)
  return jax.ShapeDtypeStruct(shape, dtype, sharding=s)


@dataclasses.dataclass
class Program:
  name: str
  what: str
  compiled: object  # None: the compiler ran out of HBM (see error)
  error: str
  resident: int  # bytes per chip held by other buffers while it runs
  resident_what: str
  seconds: float
  model_flops: float  # per chip, `train_flops` / `sample_flops` (with remat)
  mfu_flops: float = 0.0  # per chip, the same without recomputation
  forward_flops: float = 0.0  # per chip, the reference forward of an update
  inner_updates: int = 0  # train steps per update (0: not a train step)


def _cond_input(mesh, model, batch: int):
  """The family's conditioning of ``batch`` rows as sharded abstract inputs."""
  return jax.tree.map(
    lambda x: _batch_input(mesh, x.shape, x.dtype, batch), model.cond_spec(batch)
  )


def _compile(jitted, *args):
  """(compiled or None, error message, seconds). The TPU compiler refuses a
  program whose buffers exceed HBM; that is a finding here, not a crash."""
  t0 = time.perf_counter()
  try:
    compiled, error = jitted.lower(*args).compile(), ''
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    compiled, error = None, str(e).split('RESOURCE_EXHAUSTED: ', 1)[-1].strip()
  return compiled, error, time.perf_counter() - t0


def compile_programs(config, mesh, programs=PROGRAMS) -> Iterator[Program]:
  """Lowers and compiles the train step, then the sampler, for ``mesh``
  (those named in ``programs``)."""
  from varrl_jax.rl import grpo
  from varrl_jax.rl import lora as lora_lib
  from varrl_jax.rl.loop import Method
  from varrl_jax.sampling import Sampler

  if config.model.get('dense_layout') == 'auto':
    # 'auto' follows the default backend, this CPU host; the programs are
    # for TPU (models/rows.py resolve_dense_layout).
    config = config.copy_and_resolve_references()
    config.model.dense_layout = 'batched'
  model = build_model(config)
  rl = config.rl
  opts = SamplingOptions.from_config(config.sampling)
  boxed = jax.eval_shape(model.init_boxed, jax.random.key(0))
  params = nn.unbox(boxed)
  p_shard = nn.unbox(parallel.logical_shardings(mesh, boxed))
  abstract_params = _sds(params, p_shard)
  tr_params, tr_shard = params['transformer'], p_shard['transformer']
  rep = parallel.replicated(mesh)

  optimizer = grpo.make_optimizer(rl)
  lora = lora_lib.from_config(rl.lora, model)
  if lora is None:
    state = jax.eval_shape(lambda p: grpo.init_state(p, optimizer), tr_params)
    state_shard = grpo.TrainState(
      step=rep,
      params=tr_shard,
      opt_state=parallel.like_params(state.opt_state, tr_params, tr_shard, mesh),
    )
  else:
    adapters = jax.eval_shape(lora.init, jax.random.key(0))
    state = jax.eval_shape(lambda p: grpo.init_state(p, optimizer), adapters)
    state_shard = grpo.state_shardings(model, optimizer, mesh, lora)
  abstract_state = _sds(state, state_shard)
  ref_bytes = _bytes_per_device(abstract_params['transformer'])
  opt_bytes = _bytes_per_device(abstract_state.opt_state)
  # LoRA: the base is the step's own argument (and the reference); the
  # sampler's merged params are a copy beside the base and the adapters.
  step_args = () if lora is None else (abstract_params['transformer'],)
  step_resident = (ref_bytes, 'reference params') if lora is None else (0, 'none')
  sample_resident = (ref_bytes + opt_bytes, 'reference params + optimizer state')
  if lora is not None:
    sample_resident = (
      ref_bytes + _bytes_per_device(abstract_state),
      'base params + adapters + their optimizer state',
    )

  sched, dims = model.schedule, model.dims
  # The largest step of an update: a suffix step trains all P G K rows.
  branches = 1 if rl.mode == 'vanilla' else rl.vmr.num_branches
  b = rl.prompts_per_update * rl.group_size * branches
  n, t_t, c = sched.num_tokens, dims.prefix_len, model.input_dim
  f32 = jnp.float32
  batch = {
    'cond': _cond_input(mesh, model, b),
    'inputs': _batch_input(mesh, (b, n, c), f32, b),
    'tokens': _batch_input(
      mesh, (b, n, *model.dist.token_shape), model.dist.token_dtype, b
    ),
    'old_logp': _batch_input(mesh, (b, n), f32, b),
    'ref_logp': _batch_input(mesh, (b, n), f32, b),
    'advantages': _batch_input(mesh, (b,), f32, b),
    'mask': _batch_input(mesh, (b, n), f32, b),
    'weights': jax.ShapeDtypeStruct((n,), f32, sharding=rep),
    'on_policy': jax.ShapeDtypeStruct((), f32, sharding=rep),
  }
  hp = grpo.GrpoHParams.from_config(rl)
  if hp.decoupled:  # an overlap run's off-policy batch
    batch['behaviour_logp'] = _batch_input(mesh, (b, n), f32, b)
  cfg_rows = opts.uses_uncond and opts.policy == 'cfg'
  rows = f' ({2 * b} rows with the CFG branch)' if cfg_rows else ''
  step = grpo.make_train_step(
    model,
    opts,
    hp,
    optimizer,
    Method.from_config(config, model).alpha,
    lora=lora,
  )
  with parallel.mesh_context(mesh):
    if 'train_step' in programs:
      compiled, error, seconds = _compile(step, abstract_state, batch, *step_args)
  lora_what = '' if lora is None else f', LoRA rank {lora.rank}'
  if hp.micro_rows:
    lora_what += f', {b // hp.micro_rows} micro-batches of {hp.micro_rows} sequences'
  eff = 2 * b if cfg_rows else b
  if 'train_step' in programs:
    yield Program(
      'train_step',
      f'GRPO update, {b} sequences{rows} x {t_t + n:,} tokens{lora_what}',
      compiled,
      error,
      *step_resident,
      seconds,
      flops.train_flops(dims, eff, sched.num_scales) / mesh.size,
      flops.train_flops(dims, eff, sched.num_scales, remat=False) / mesh.size,
      eff * flops.forward_flops(dims, sched.num_scales) / mesh.size,
      int(rl.inner_updates),
    )

  sb = rl.prompts_per_update // rl.rollout_chunks * rl.group_size
  sampler = Sampler(model, opts)
  key = jax.eval_shape(lambda: jax.random.key(0))
  args = (
    abstract_params,
    _cond_input(mesh, model, sb),
    jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep),
  )
  if 'sample' not in programs:
    return
  with parallel.mesh_context(mesh):
    compiled, error, seconds = _compile(sampler.program('sample'), *args)
  srows = f' ({2 * sb} rows with CFG)' if opts.uses_uncond else ''
  yield Program(
    'sample',
    f'KV-cached sampler, one rollout chunk: {sb} images{srows}, '
    f'{sched.num_scales} scales',
    compiled,
    error,
    *sample_resident,
    seconds,
    flops.sample_flops(dims, 2 * sb if opts.uses_uncond else sb) / mesh.size,
  )


def run(config, topology: str, programs=PROGRAMS) -> bool:
  """Compiles ``programs`` (default both) for ``topology``, prints the tables
  and the verdict; returns whether everything fits."""
  chip, name, devices = tpu_devices(topology)
  mesh = parallel.make_mesh(config.mesh, devices)
  batch_check.check_batches(
    config, len(devices), len({d.process_index for d in devices})
  )
  print(
    f'AOT compile for {topology} ({name}, {len(devices)} chips) on '
    f'{jax.devices()[0].platform.upper()} host; attention={config.model.attention}, '
    f'remat={config.model.remat}'
  )
  fits = []
  for program in compile_programs(config, mesh, tuple(programs)):
    fits.append(report(program, chip, mesh, topology, parallel.MESH_AXES))
    sys.stdout.flush()
  ok = all(f.ok for f in fits)
  parts = ', '.join(
    f'{f.name} {f.hbm_gib:.1f} of {f.capacity_gib:.1f} GiB' for f in fits
  )
  print(f'fit: {"yes" if ok else "NO"} ({parts} per chip)')
  return ok


def main(argv):
  del argv
  # Nothing here runs on a local accelerator: keep JAX on the host CPU (and
  # off a TPU that a training job on this VM may hold).
  jax.config.update('jax_platforms', 'cpu')
  ok = cli.run_reporting_errors(run, _CONFIG.value, _TOPOLOGY.value, _PROGRAMS.value)
  sys.exit(0 if ok else 1)


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['config', 'topology'])
  # Compiling only: no kept malloc heap, which serves running programs and
  # with its few arenas slowed the compiler (`varrl_jax.hostenv`).
  app.run(main, flags_parser=functools.partial(cli.parse_flags, keep_heap=False))
