r"""Tokenizer pretraining step: patch-matmul vs XLA convolution weight gradients.

  python benchmarks/tokenizer_step.py --config=configs/tiny.py
  python benchmarks/tokenizer_step.py --config=configs/tiny.py --trainable=decoder

Builds the tokenizer stage's jitted train step (`pretrain.tokenizer_stage`)
twice from one config, once with ``tokenizer.conv_weight_grad='xla'`` and
once with ``'matmul'`` (`models.conv`), on the same synthetic batch of
``pretrain.tokenizer.batch_size`` renders, from the same initial parameters.
Each repeat times one step of each, back to back, so both see the same load
on the machine; the figures are medians over ``--repeats`` after
``--warmup`` steps. It also checks that the two steps compute the same
update (largest parameter difference after three steps, beside the
largest parameter change).

The last line is ``tokenizer_step_speedup N.NNx`` = XLA time / matmul time.
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np
import tokenizer_setup
from absl import app, flags
from ml_collections import config_flags

from varrl_jax import cli
from varrl_jax.models.family import build_model
from varrl_jax.pretrain import tokenizer_stage as stage

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/tiny.py', 'Config file.')
_TRAINABLE = flags.DEFINE_enum(
  'trainable', 'all', stage.TRAINABLE, 'Which tokenizer part the step updates.'
)
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')
_REPEATS = flags.DEFINE_integer('repeats', 10, 'Timed steps of each variant.')


def build(config, weight_grad: str, trainable: str):
  """(jitted step, initial state factory) for one weight-gradient choice."""
  config = config.copy_and_resolve_references()
  config.tokenizer.conv_weight_grad = weight_grad
  config.pretrain.tokenizer.trainable = trainable
  return tokenizer_setup.tokenizer_step(config, build_model(config))


def main(argv):
  del argv
  config = _CONFIG.value
  model = build_model(config)
  pc = config.pretrain
  batch = tokenizer_setup.train_batch(config, model, pc.tokenizer.batch_size)
  key = jax.random.key(0)
  variants = {w: build(config, w, _TRAINABLE.value) for w in ('xla', 'matmul')}

  # Three steps from the same state (the warmup's first lr is 0): the
  # updates must agree up to rounding.
  after, change = {}, None
  for name, (step, init) in variants.items():
    state = init()
    before = jax.device_get(state.params)
    for _ in range(3):
      state, _ = step(state, batch, key)
    after[name] = jax.device_get(state.params)
    change = max(
      float(np.max(np.abs(a - b)))
      for a, b in zip(
        jax.tree.leaves(after[name]), jax.tree.leaves(before), strict=True
      )
    )
  diff = max(
    float(np.max(np.abs(a - b)))
    for a, b in zip(
      jax.tree.leaves(after['xla']), jax.tree.leaves(after['matmul']), strict=True
    )
  )

  states = {name: init() for name, (_, init) in variants.items()}

  def run(name):
    step = variants[name][0]
    t = time.perf_counter()
    states[name], metrics = step(states[name], batch, key)
    jax.block_until_ready(metrics)
    return time.perf_counter() - t

  for _ in range(_WARMUP.value):
    for name in variants:
      run(name)
  times = {name: [] for name in variants}
  for _ in range(_REPEATS.value):
    for name in variants:
      times[name].append(run(name))
  med = {name: statistics.median(t) for name, t in times.items()}
  h, w = model.schedule.image_size
  print(
    f'tokenizer step, trainable={_TRAINABLE.value}, batch {pc.tokenizer.batch_size} '
    f'x {h}x{w}, channels {tuple(config.tokenizer.channels)}, '
    f'backend {jax.default_backend()}'
  )
  for name in variants:
    print(
      f'  weight grad {name:6s}: {med[name]:.3f} s/step (median of '
      f'{_REPEATS.value}; min {min(times[name]):.3f})'
    )
  print(
    f'  three steps from the same state: max |xla - matmul| = {diff:.2e}, '
    f'max parameter change = {change:.2e}'
  )
  print(f'tokenizer_step_speedup {med["xla"] / med["matmul"]:.2f}x')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
