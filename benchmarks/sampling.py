r"""Sampling throughput: KV-cached sampler vs. recomputing the prefix at every scale.

  python benchmarks/sampling.py --config=configs/tiny.py
  python benchmarks/sampling.py --config=configs/var_d16.py --batch_size=2

Both samplers run the same model, weights, prompts and key in this one run
(they draw identical tokens in exact float32 arithmetic: on CPU, or with
``--matmul_precision=highest`` on GPUs; checked below). Reports images/s, compile time,
achieved FLOP/s (XLA's cost analysis of each compiled program / measured
time) as a fraction of a matmul peak measured in the same run, and ends with
the ratio line ``kv_cache_speedup N.NNx``.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from varrl_jax import cli, sampling
from varrl_jax.models.family import build_model
from varrl_jax.policy import SamplingOptions

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/tiny.py', 'Config file.')
_BATCH = flags.DEFINE_integer('batch_size', None, 'Images per call (default: config).')
_RUNS = flags.DEFINE_integer('runs', 5, 'Timed runs per sampler (median reported).')
_PRECISION = flags.DEFINE_enum(
  'matmul_precision',
  'default',
  ['default', 'high', 'highest'],
  'jax_default_matmul_precision. On GPUs "default" is TF32: the two samplers '
  'then round differently and their tokens drift apart; "highest" makes them equal.',
)


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get('flops', 0.0)) if cost else 0.0


def matmul_peak(n: int = 2048, dtype=jnp.float32, runs: int = 5) -> float:
  """FLOP/s of an n x n x n matmul on the default device (best of `runs`)."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(runs))
  return 2 * n**3 / best


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def compile_program(name, sampler, params, cond):
  key = jax.random.key(0)
  t = time.perf_counter()
  compiled = sampler.program(name).lower(params, cond, key).compile()
  compile_s = time.perf_counter() - t
  out = jax.block_until_ready(compiled(params, cond, key))
  return compiled, out, compile_s


def interleaved_times(programs: dict, args, runs: int) -> dict:
  """Median seconds per call, the programs' runs alternating so that load
  changes on the machine affect both sides alike."""
  times = {name: [] for name in programs}
  for _ in range(runs):
    for name, fn in programs.items():
      times[name].append(_timed(lambda fn=fn: jax.block_until_ready(fn(*args))))
  return {name: statistics.median(t) for name, t in times.items()}


def main(argv):
  del argv
  config = _CONFIG.value
  if _PRECISION.value != 'default':
    jax.config.update('jax_default_matmul_precision', _PRECISION.value)
  model = build_model(config)
  batch = _BATCH.value or config.sampling.batch_size
  opts = SamplingOptions.from_config(config.sampling)
  params = model.init(jax.random.key(0))
  examples = model.example_prompts
  cond = model.encode_prompts([examples[i % len(examples)] for i in range(batch)])
  sampler = sampling.Sampler(model, opts)
  peak = matmul_peak()
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}')
  print(
    f'model: {sum(x.size for x in jax.tree.leaves(params["transformer"])) / 1e6:.1f}M '
    f'transformer params, {model.schedule.num_scales} scales, '
    f'{model.schedule.num_tokens} tokens/image, batch {batch}, cfg {opts.cfg_scale}'
  )
  print(f'matmul peak (2048^3 f32, this run): {peak / 1e9:.1f} GFLOP/s')
  if config.model.scan_unroll < config.model.num_layers:
    print(
      'note: XLA counts the FLOPs of a scanned loop body once; with '
      f'--config.model.scan_unroll={config.model.num_layers} the counts cover every layer'
    )
  compiled, outs, compile_s = {}, {}, {}
  for name in ('sample', 'recompute'):
    compiled[name], outs[name], compile_s[name] = compile_program(
      name, sampler, params, cond
    )
  step_s = interleaved_times(compiled, (params, cond, jax.random.key(0)), _RUNS.value)
  for name, label in (('sample', 'kv-cache '), ('recompute', 'recompute')):
    flops = _flops(compiled[name])
    print(
      f'{label}: {batch / step_s[name]:8.2f} images/s  ({step_s[name] * 1e3:.0f} ms/call, '
      f'compile {compile_s[name]:.1f}s, {flops / 1e9:.1f} GFLOP/call (XLA count), '
      f'{flops / step_s[name] / 1e9:.1f} GFLOP/s = {flops / step_s[name] / peak:.1%} of peak)'
    )
  a, b = np.asarray(outs['sample'][0]), np.asarray(outs['recompute'][0])
  same = np.array_equal(a, b)
  print(
    f'identical tokens from both samplers: {same} ({np.mean(a == b):.1%} of tokens '
    f'equal; matmul precision {_PRECISION.value})'
  )
  if not same and jax.default_backend() != 'cpu' and _PRECISION.value != 'highest':
    print(
      'note: at reduced matmul precision (TF32 on GPUs) the cached and recomputed '
      'logits round differently and one flipped token changes every later scale; '
      '--matmul_precision=highest compares them exactly'
    )
  print(f'kv_cache_speedup {step_s["recompute"] / step_s["sample"]:.2f}x')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
