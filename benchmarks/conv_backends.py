r"""XLA:CPU convolutions: XLA's own (Eigen) kernels vs. YNNPACK's.

  python benchmarks/conv_backends.py --config=configs/tiny.py
  python benchmarks/conv_backends.py --config=configs/var_d16.py --batch_size=2 --runs=3

The programs that hold convolutions are compiled twice from one config, with
`varrl_jax.xla_cpu.program_options` (XLA:CPU's default library fusions less
the convolutions: what the sampler and the tokenizer stage use on CPU) and
with XLA's default (YNNPACK convolutions, ``VARRL_CPU_CONV=ynn``):

- ``decode``: the tokenizer's decode of a batch of latents to images;
- ``sample``: the KV-cached sampler's whole call (its scale residuals and
  the decode are the convolutions);
- ``tokenizer_step`` (families with a trainable tokenizer of ours): one
  step of the tokenizer pretraining stage (forward and backward).

Each repeat runs every program once, the two variants alternating, so load
changes on the host affect both alike; the figures are medians. Beside each
ratio: the largest difference between the two variants' outputs (images in
uint8 levels; the tokenizer step's loss). The last
lines are ``xla_vs_ynn_<program> N.NNx`` (YNNPACK seconds / XLA seconds).
"""

from __future__ import annotations

import functools
import statistics
import time

import jax
import numpy as np
import tokenizer_setup
from absl import app, flags
from ml_collections import config_flags

from varrl_jax import cli, sampling, xla_cpu
from varrl_jax.models.family import build_model
from varrl_jax.policy import SamplingOptions

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/tiny.py', 'Config file.')
_BATCH = flags.DEFINE_integer(
  'batch_size',
  None,
  'Images per call of each program (default: config.sampling.batch_size).',
)
_RUNS = flags.DEFINE_integer('runs', 9, 'Timed runs of each program (median).')


def _tokenizer_step(config, model, backend: str, batch_size: int):
  """(jitted tokenizer-stage step, fresh-state factory, batch of
  ``batch_size`` images), or None for a family whose tokenizer is not ours to
  train."""
  if model.family != 'varrl':
    return None
  step, init = tokenizer_setup.tokenizer_step(config, model, conv_backend=backend)
  return step, init, tokenizer_setup.train_batch(config, model, batch_size)


def main(argv):
  del argv
  config = _CONFIG.value
  options = xla_cpu.program_options()
  if options is None:
    raise app.UsageError(
      f'no XLA:CPU convolution choice here: CPU backend {jax.default_backend()}, '
      f'{xla_cpu.OPT_OUT}={xla_cpu.conv_backend()}, or the jaxlib refuses '
      f'{xla_cpu.OPTION}'
    )
  model = build_model(config)
  params = model.init(jax.random.key(0))
  batch = _BATCH.value or config.sampling.batch_size
  opts = SamplingOptions.from_config(config.sampling)
  examples = model.example_prompts
  cond = model.encode_prompts([examples[i % len(examples)] for i in range(batch)])
  key = jax.random.key(0)
  f_hat = jax.random.normal(jax.random.key(1), model.zero_fhat(batch).shape) * 0.5
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}; batch {batch}')
  print(f'xla variant: {xla_cpu.OPTION}={options[xla_cpu.OPTION]}')

  calls = {}  # (program, variant) -> zero-argument call returning arrays
  for variant in ('xla', 'ynn'):
    opt = xla_cpu.program_options(backend=variant)
    decode = jax.jit(model.decode_fhat, compiler_options=opt)
    decode = decode.lower(params, f_hat).compile()
    calls['decode', variant] = functools.partial(decode, params, f_hat)
    sampler = sampling.Sampler(model, opts, conv_backend=variant)
    sample = sampler.program('sample').lower(params, cond, key).compile()
    calls['sample', variant] = functools.partial(sample, params, cond, key)
    step = _tokenizer_step(config, model, variant, batch)
    if step is not None:
      fn, init, images = step
      states = {variant: init()}

      def run(fn=fn, images=images, variant=variant, states=states):
        states[variant], metrics = fn(states[variant], images, key)
        return metrics['loss']

      calls['tokenizer_step', variant] = run
  for (program, variant), fn in calls.items():  # warm-up
    t = time.perf_counter()
    jax.block_until_ready(fn())
    print(
      f'{program} ({variant}): first run {time.perf_counter() - t:.2f} s', flush=True
    )
  times = {k: [] for k in calls}
  for _ in range(_RUNS.value):
    for k, fn in calls.items():
      t = time.perf_counter()
      jax.block_until_ready(fn())
      times[k].append(time.perf_counter() - t)
  programs = dict.fromkeys(p for p, _ in calls)
  for p in programs:
    xla, ynn = (statistics.median(times[p, v]) for v in ('xla', 'ynn'))
    a, b = (
      np.asarray(jax.tree.leaves(calls[p, v]())[-1], np.float64) for v in ('xla', 'ynn')
    )
    print(
      f'{p}: xla {xla * 1e3:.1f} ms, ynn {ynn * 1e3:.1f} ms (medians of '
      f'{_RUNS.value}); largest output difference {np.abs(a - b).max():.2g}'
    )
  for p in programs:
    xla, ynn = (statistics.median(times[p, v]) for v in ('xla', 'ynn'))
    print(f'xla_vs_ynn_{p} {ynn / xla:.2f}x')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
