r"""AOT roofline of the RL programs for a TPU topology, compiled on this CPU host.

  pip install -e ".[tpu]"     # libtpu: the TPU compiler, no TPU needed
  python benchmarks/aot_roofline.py                          # tiny on v5p-8, ~1 min
  python benchmarks/aot_roofline.py --config=configs/cvtg.py --topology=v5p-128 \
      --programs=train_step    # ~5 min on 2 cores; the sampler adds more minutes

Wraps `varrl_jax.aot`: the GRPO step and the KV-cached sampler (one rollout
chunk) are lowered with abstract sharded inputs over ``config.mesh`` laid on
the slice's devices and compiled by the real TPU compiler. ``aot`` prints
each program's table (memory analysis, resident buffers, FLOPs, HBM and
collective bytes, roofline, MFU bound: `varrl_jax.aot_report` gives the
equations); this adds the summary per program and per chip:

    roofline  = max(t_compute, t_memory, t_ici)
    MFU bound = model FLOPs (no recomputation) / (roofline x peak)

The last lines: the GRPO step's per-chip HBM (program + resident reference
parameters) over the chip's capacity (``grpo_step_hbm_fraction``),
t_compute / t_memory of the step (``grpo_step_compute_vs_memory``; > 1:
compute-bound), the roofline time and MFU bound of one RL update (the
reference forward at the compute roofline + ``rl.inner_updates`` steps),
and last ``grpo_step_mfu_bound N.NNx (<bound>-bound)``.
"""

from __future__ import annotations

import jax
from absl import app, flags
from ml_collections import config_flags

from varrl_jax import aot, aot_report, cli, parallel

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
  fits, lines, programs = {}, {}, {}
  wanted = set(_PROGRAMS.value) | {'train_step'}
  for program in aot.compile_programs(config, mesh):
    fits[program.name] = aot.report(program, chip, mesh, topology, parallel.MESH_AXES)
    if program.compiled is not None:
      lines[program.name] = aot_report.roofline(program, chip, mesh.size)
      programs[program.name] = program
    if wanted <= set(fits):
      break  # the generator compiles the next program only when asked

  print(
    f'\nroofline per chip ({chip.name}: {chip.peak_tflops:g} TFLOP/s, '
    f'{chip.hbm_gbps:g} GB/s HBM, {chip.ici_gbps:g} GB/s ICI, {chip.hbm_gib:g} GiB)'
  )
  print(
    f'{"program":12s}{"HBM GiB":>9s}{"of cap":>8s}{"FLOPs":>11s}{"bytes":>11s}'
    f'{"ICI bytes":>11s}{"t_compute":>11s}{"t_memory":>11s}{"t_ici":>9s}'
    f'{"roofline":>10s}{"MFU<=":>7s}  bound'
  )
  for pname, fit in fits.items():
    r = lines.get(pname)
    if r is None:
      print(
        f'{pname:12s}{fit.hbm_gib:9.2f}{fit.hbm_gib / fit.capacity_gib:8.1%}  '
        'compile refused (out of HBM)'
      )
      continue
    t = r.terms
    print(
      f'{pname:12s}{fit.hbm_gib:9.2f}{fit.hbm_gib / fit.capacity_gib:8.1%}'
      f'{r.flops:11.3e}{r.hbm_bytes:11.3e}{r.ici_bytes:11.3e}{t["compute"]:11.3g}'
      f'{t["HBM bandwidth"]:11.3g}{t["ICI bandwidth"]:9.3g}{r.seconds:10.3g}'
      f'{r.mfu_bound:7.2f}  {r.bound}'
    )
  step = fits['train_step']
  print(f'grpo_step_hbm_fraction {step.hbm_gib / step.capacity_gib:.4f}x')
  if 'train_step' not in lines:
    raise SystemExit('the GRPO step did not compile (out of HBM): no roofline ratio')
  r, t = lines['train_step'], lines['train_step'].terms
  print(f'grpo_step_compute_vs_memory {t["compute"] / t["HBM bandwidth"]:.2f}x')
  mfu, seconds = aot_report.update_mfu_bound(programs['train_step'], r)
  print(
    f'rl_update_roofline {seconds:.3g} s per update (reference forward + '
    f'{programs["train_step"].inner_updates} step(s)), MFU bound {mfu:.2f}'
  )
  print(f'grpo_step_mfu_bound {r.mfu_bound:.2f}x ({r.bound}-bound)')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
