r"""Sampling throughput: KV-cached sampler vs. recomputing the prefix at every
scale, and (VAR family) vs. the official FoundationVision/VAR sampler.

  python benchmarks/sampling.py --config=configs/tiny.py
  python benchmarks/sampling.py --config=configs/var.py:16 --batch_size=8 \
      --official_repo=/path/to/VAR --official_python=/path/to/venv/bin/python

With ``--official_repo`` (a checkout of FoundationVision/VAR; their code runs
in a worker process, `official_var_worker.py`, with ``--official_python``,
which needs torch and huggingface_hub) the official model is built with their
random init, its state_dicts are converted into ours (the same weights on
both sides), and their ``autoregressive_infer_cfg`` is timed in this run,
alternating with ours, at the config's sampling settings (configs/var.py:
the demo's CFG 4 on their ramp, top-k 900, top-p 0.95). The last line is
then ``ours_vs_official N.NNx`` (official seconds per batch / ours).

Both samplers run the same model, weights, prompts and key in this one run
(they draw identical tokens in exact float32 arithmetic: on CPU, or with
``--matmul_precision=highest`` on GPUs; checked below). Per path: seconds per
call, images/s, compile time, FLOPs per call (the transformer's matmuls and
visible attention counted analytically, `models/flops.py`, plus XLA's count
of the tokenizer work both paths share: residuals, next inputs, the decode;
XLA's whole-program count is printed beside it, but it counts a scanned
layer once) and the FLOP/s they make as a fraction of a matmul peak measured
in the same run. Then ``flop_ratio`` (recompute / kv-cache FLOPs),
``kv_speedup_vs_flop_ratio`` (how much of the FLOPs saved the cached path
turns into time: 1.00 when both run equally fast per FLOP) and the last line
``kv_cache_speedup N.NNx``. At VAR-d16 size on a CPU host use a small batch
and one run (a cached call takes ~1 minute, a recomputed one ~3):

  python benchmarks/sampling.py --config=configs/var_d16.py --batch_size=4 --runs=1
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from varrl_jax import cli, sampling
from varrl_jax.models import flops
from varrl_jax.models.family import build_model
from varrl_jax.policy import SamplingOptions

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/tiny.py', 'Config file.')
_BATCH = flags.DEFINE_integer('batch_size', None, 'Images per call (default: config).')
_RUNS = flags.DEFINE_integer('runs', 5, 'Timed runs per sampler (median reported).')
_OFFICIAL = flags.DEFINE_string(
  'official_repo', None, 'A FoundationVision/VAR checkout: time their sampler too.'
)
_OFFICIAL_PY = flags.DEFINE_string(
  'official_python', sys.executable, 'Python with torch + huggingface_hub for it.'
)
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


def recompute_flops(dims, rows: int) -> float:
  """The recompute path: a teacher-forced forward over scales 0..s for every
  s (prefix, image tokens, head), ``rows`` rows."""
  sched = dims.schedule
  per_row = sum(
    flops.pass_flops(dims, 0, dims.prefix_len + int(sched.offsets[s + 1]), True)
    + flops.cross_kv_flops(dims)
    for s in range(sched.num_scales)
  )
  return rows * per_row


def tokenizer_flops(model, params, batch: int) -> float:
  """XLA's count of the tokenizer work both paths do once per call: every
  scale's residual and next input, and the decode of f_hat (no loops: the
  count is whole)."""

  def work(params, f_hat):
    for s in range(model.schedule.num_scales):
      grid = model.schedule.grids[s]
      ids = jnp.zeros((batch, *grid, *model.dist.token_shape), model.dist.token_dtype)
      f_hat = f_hat + model.scale_residual(params, ids, s)
      if s + 1 < model.schedule.num_scales:
        f_hat = f_hat + model.next_input(f_hat, s + 1).mean()
    return model.decode_fhat(params, f_hat)

  return _flops(jax.jit(work).lower(params, model.zero_fhat(batch)).compile())


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
  changes on the machine affect both sides alike. A program that returns a
  float reports its own seconds (the official worker: no IPC counted)."""
  times = {name: [] for name in programs}
  for _ in range(runs):
    for name, fn in programs.items():
      t = time.perf_counter()
      out = jax.block_until_ready(fn(*args))
      times[name].append(out if isinstance(out, float) else time.perf_counter() - t)
  return {name: statistics.median(t) for name, t in times.items()}


class OfficialWorker:
  """The official sampler in a worker process (see official_var_worker.py)."""

  def __init__(self, repo: str, python: str):
    worker = os.path.join(
      os.path.dirname(os.path.abspath(__file__)), 'official_var_worker.py'
    )
    self.proc = subprocess.Popen(
      [python, worker, f'--var_repo={repo}'],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
    )

  def ask(self, **msg) -> dict:
    self.proc.stdin.write(json.dumps(msg) + '\n')
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f'the official worker exited ({self.proc.wait()})')
    reply = json.loads(line)
    if 'error' in reply:
      raise RuntimeError(reply['error'])
    return reply

  def close(self):
    if self.proc.poll() is None:
      self.ask_quit()

  def ask_quit(self):
    self.proc.stdin.write(json.dumps({'cmd': 'quit'}) + '\n')
    self.proc.stdin.flush()
    self.proc.wait(timeout=60)


def official_weights(model, worker: OfficialWorker, tmp: str):
  """Their random init, converted into our params (the same weights)."""
  from varrl_jax.convert import torch_io
  from varrl_jax.models.var_official import weights

  cfg = model.cfg
  info = worker.ask(
    cmd='init',
    depth=cfg.depth,
    patch_nums=[g[0] for g in model.schedule.grids],
    shared_aln=cfg.shared_aln,
    out_dir=tmp,
    seed=0,
  )
  vae = torch_io.load_state_dict(info['vae'])
  var = torch_io.load_state_dict(info['var'])
  params = weights.params_from_state_dicts(model, vae, info['vae'], var, info['var'])
  return jax.tree.map(jnp.asarray, params), info


def main(argv):
  del argv
  config = _CONFIG.value
  if _PRECISION.value != 'default':
    jax.config.update('jax_default_matmul_precision', _PRECISION.value)
  model = build_model(config)
  batch = _BATCH.value or config.sampling.batch_size
  opts = SamplingOptions.from_config(config.sampling)
  worker = info = None
  if _OFFICIAL.value:
    if model.family != 'var':
      raise app.UsageError('--official_repo compares the var family (configs/var.py)')
    worker = OfficialWorker(_OFFICIAL.value, _OFFICIAL_PY.value)
    tmp = tempfile.mkdtemp(prefix='var_official_')
    params, info = official_weights(model, worker, tmp)
    print(
      f'official: {_OFFICIAL.value} at {info["commit"][:7]}, torch {info["torch"]}, '
      f'{info["threads"]} threads; their random init converted into ours'
    )
  else:
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
  rows = 2 * batch if opts.uses_uncond else batch
  other = tokenizer_flops(model, params, batch)
  kv_flops = flops.sample_flops(model.dims, rows)
  if opts.uses_uncond and model.shared_null_prefill:  # B + 1 prefilled rows
    kv_flops -= (batch - 1) * flops.prefill_flops(model.dims)
  path_flops = {
    'sample': kv_flops + other,
    'recompute': recompute_flops(model.dims, rows) + other,
  }
  print(
    f'FLOPs per call ({rows} rows): kv-cache {path_flops["sample"] / 1e9:.1f} G, '
    f'recompute {path_flops["recompute"] / 1e9:.1f} G (transformer matmuls and '
    f'visible attention, analytic, + {other / 1e9:.1f} G of tokenizer work, '
    "XLA's count: residuals, inputs, decode)"
  )
  compiled, outs, compile_s = {}, {}, {}
  for name in ('sample', 'recompute'):
    compiled[name], outs[name], compile_s[name] = compile_program(
      name, sampler, params, cond
    )
  programs = dict(compiled)
  if worker is not None:
    labels = [int(x) for x in np.asarray(cond['label'])]
    run = dict(cmd='run', labels=labels, cfg=opts.cfg_scale, top_k=opts.top_k)
    run['top_p'] = opts.top_p if opts.top_p < 1.0 else 0.0
    worker.ask(**run)  # warm-up

    def official(*_):
      return worker.ask(**run)['seconds']

    programs['official'] = official
  step_s = interleaved_times(programs, (params, cond, jax.random.key(0)), _RUNS.value)
  # Measured again after the timed runs (the best of both): on a shared host
  # one measurement can land in a busy moment.
  peak = max(peak, matmul_peak())
  print(
    f'matmul peak (2048^3 f32, this run, before and after): {peak / 1e9:.1f} GFLOP/s'
  )
  labels = (('sample', 'kv-cache '), ('recompute', 'recompute'))
  for name, label in labels:
    sec, fl = step_s[name], path_flops[name]
    print(
      f'{label}: {sec:.3f} s/call, {batch / sec:.2f} images/s (compile '
      f'{compile_s[name]:.1f} s); {fl / 1e9:.1f} GFLOP/call (XLA whole-program '
      f'count {_flops(compiled[name]) / 1e9:.1f}, which counts a scanned layer '
      f'once): {fl / sec / 1e9:.1f} GFLOP/s = {fl / sec / peak:.1%} of the matmul peak'
    )
  if worker is not None:
    sec = step_s['official']
    print(
      f'official : {sec:.3f} s/call, {batch / sec:.2f} images/s; at the kv-cache '
      f"path's FLOPs {path_flops['sample'] / sec / peak:.1%} of the matmul peak"
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
  speedup = step_s['recompute'] / step_s['sample']
  ratio = path_flops['recompute'] / path_flops['sample']
  print(f'flop_ratio {ratio:.2f} (recompute / kv-cache FLOPs per call)')
  print(f'kv_speedup_vs_flop_ratio {speedup / ratio:.2f}')
  print(f'kv_cache_speedup {speedup:.2f}x')
  if worker is not None:
    worker.close()
    print(f'ours_vs_official {step_s["official"] / step_s["sample"]:.2f}x')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
