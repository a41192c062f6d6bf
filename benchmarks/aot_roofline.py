r"""AOT roofline of the RL programs for a TPU topology, compiled on this CPU host.

  pip install -e ".[tpu]"     # libtpu: the TPU compiler, no TPU needed
  python benchmarks/aot_roofline.py                          # tiny on v5p-8, ~1 min
  python benchmarks/aot_roofline.py --config=configs/cvtg.py --topology=v5p-128 \
      --programs=train_step    # ~5 min on 2 cores; the sampler adds more minutes

Wraps `varrl_jax.aot`: the GRPO step and the KV-cached sampler (one rollout
chunk) are lowered with abstract sharded inputs over ``config.mesh`` laid on
the slice's devices and compiled by the real TPU compiler. ``aot`` prints
each program's table (memory analysis, resident buffers, XLA's FLOPs and
bytes); this adds the roofline summary per program and per chip:

    t_compute = max(FLOPs_XLA, FLOPs_model) / peak      (bf16 spec peak)
    t_memory  = bytes_XLA / HBM bandwidth
    roofline  = max(t_compute, t_memory)

FLOPs_model is `models.flops.train_flops` / `sample_flops` (XLA counts a scanned
layer once and sees nothing inside Pallas kernels); XLA's bytes are a lower
bound, so the roofline is optimistic. Second-to-last line: the GRPO step's
per-chip HBM (program + resident reference parameters) over the chip's
capacity; last line ``grpo_step_compute_vs_memory N.NNx`` = t_compute /
t_memory of the GRPO step (> 1: compute-bound).
"""

from __future__ import annotations

import jax
from absl import app, flags
from ml_collections import config_flags

from varrl_jax import aot, cli, parallel

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/tiny.py', 'Config file.')
_TOPOLOGY = flags.DEFINE_string(
  'topology', 'v5p-8', 'TPU slice, e.g. v5p-8, v5p-128, v5e-16 (see varrl_jax.aot).'
)
_PROGRAMS = flags.DEFINE_multi_enum(
  'programs',
  ['train_step', 'sample'],
  ['train_step', 'sample'],
  'Programs to compile (the GRPO step is always compiled first).',
)


def roofline(program: aot.Program, chip: aot.Chip) -> dict:
  """FLOPs, bytes and the roofline terms (seconds) of one compiled program."""
  cost = program.compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = max(float(cost.get('flops', 0.0)), program.model_flops)
  nbytes = float(cost.get('bytes accessed', 0.0))
  t_compute = flops / (chip.peak_tflops * 1e12)
  t_memory = nbytes / (chip.hbm_gbps * 1e9)
  return {'flops': flops, 'bytes': nbytes, 't_compute': t_compute, 't_memory': t_memory}


def main(argv):
  del argv
  # Nothing runs on a local accelerator (as in varrl_jax.aot).
  jax.config.update('jax_platforms', 'cpu')
  config, topology = _CONFIG.value, _TOPOLOGY.value
  chip, name, devices = cli.run_reporting_errors(aot.tpu_devices, topology)
  mesh = parallel.make_mesh(config.mesh, devices)
  print(
    f'AOT compile for {topology} ({name}, {len(devices)} chips): '
    f'attention={config.model.attention}, remat={config.model.remat}'
  )
  fits, lines = {}, {}
  wanted = set(_PROGRAMS.value) | {'train_step'}
  for program in aot.compile_programs(config, mesh):
    fits[program.name] = aot.report(program, chip, mesh, topology)
    if program.compiled is not None:
      lines[program.name] = roofline(program, chip)
    if wanted <= set(fits):
      break  # the generator compiles the next program only when asked

  print(
    f'\nroofline per chip ({chip.name}: {chip.peak_tflops:g} TFLOP/s, '
    f'{chip.hbm_gbps:g} GB/s, {chip.hbm_gib:g} GiB)'
  )
  print(
    f'{"program":12s}{"HBM GiB":>9s}{"of cap":>8s}{"FLOPs":>11s}{"bytes":>11s}'
    f'{"t_compute":>11s}{"t_memory":>11s}{"roofline":>11s}  bound'
  )
  for pname, fit in fits.items():
    r = lines.get(pname)
    if r is None:
      print(
        f'{pname:12s}{fit.hbm_gib:9.2f}{fit.hbm_gib / fit.capacity_gib:8.1%}  '
        'compile refused (out of HBM)'
      )
      continue
    bound = 'compute' if r['t_compute'] >= r['t_memory'] else 'memory'
    print(
      f'{pname:12s}{fit.hbm_gib:9.2f}{fit.hbm_gib / fit.capacity_gib:8.1%}'
      f'{r["flops"]:11.3e}{r["bytes"]:11.3e}{r["t_compute"]:11.3g}'
      f'{r["t_memory"]:11.3g}{max(r["t_compute"], r["t_memory"]):11.3g}  {bound}'
    )
  step = fits['train_step']
  print(f'grpo_step_hbm_fraction {step.hbm_gib / step.capacity_gib:.4f}x')
  if 'train_step' not in lines:
    raise SystemExit('the GRPO step did not compile (out of HBM): no roofline ratio')
  r = lines['train_step']
  print(f'grpo_step_compute_vs_memory {r["t_compute"] / r["t_memory"]:.2f}x')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
