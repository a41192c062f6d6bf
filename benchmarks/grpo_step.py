r"""MFU of one RL update on this host: model FLOPs / update time vs a measured matmul peak.

  python benchmarks/grpo_step.py --config=configs/tiny.py
  python benchmarks/grpo_step.py --config=configs/var_d16.py --batch_size=1 \
      --config.model.num_layers=4      # VAR-d16 width and sequence, 4 of 16 layers

Runs the device work of one RL update as `rl.loop.Trainer` does (one device,
no mesh): the reference policy's teacher-forced log-probs
(`rl.grpo.make_logprob_fn`, the KL term's log pi_ref), then
``rl.inner_updates`` jitted GRPO steps (`make_train_step`), the first on
policy (it takes its own log-probs as log pi_old) and the later ones on its
returned log-probs. The batch is ``--batch_size`` full-length rows (default:
a prefix update, ``rl.prompts_per_update x rl.group_size``) of random tokens
(the cost does not depend on their values); the next-scale inputs are made
once beforehand, as `Trainer.build_batch` does with the frozen tokenizer.
Each repeat times the update (reference forward + steps, each blocked on so
the pieces can be reported) between two f32 ``n x n x n`` matmuls, so both
see the same load on the machine; over ``--repeats`` after ``--warmup``
updates.

FLOPs are `varrl_jax.models.flops` (its docstring gives F, one row's
forward). ``rows`` doubles with CFG log-probs (``sampling.policy='cfg'`` and
a guidance scale != 1: the policy is the guided distribution). Model FLOPs
of the update, without the forward that rematerialisation recomputes:

    update = rows F (1 + 3 inner)        (`flops.rl_update_flops`)
    step   = 3 F rows

MFU = (model FLOPs / fastest time) / (fastest matmul FLOP/s): on a shared
host other jobs only slow a run down, and they slow the short matmul and
the long update differently, so medians are printed beside. XLA's own
counts (``cost_analysis``) are printed beside: they also count the masked
[T, T] scores of 'plain' attention and elementwise work, and a scanned layer
loop's body once. The per-step figure is kept (``grpo_step_mfu``); the last
line is ``rl_update_mfu N.NNx``, the update's achieved FLOP/s over the peak.
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from varrl_jax import cli
from varrl_jax.models import flops
from varrl_jax.models.family import build_model
from varrl_jax.policy import SamplingOptions
from varrl_jax.rl import grpo, panw
from varrl_jax.rl.loop import Method

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/tiny.py', 'Config file.')
_BATCH = flags.DEFINE_integer(
  'batch_size', None, 'Rows per step (default: prompts_per_update x group_size).'
)
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed updates after compiling.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed (update, matmul) pairs.')
_MATMUL_N = flags.DEFINE_integer('matmul_n', 2048, 'Side of the f32 peak matmul.')


def make_batch(model, params, rows: int, alpha: float, key) -> dict:
  """A train-step batch of ``rows`` random full-length rows (see grpo docstring);
  ``ref_logp`` is filled in by the update."""
  sched, vocab = model.schedule, model.vocab_size
  k_tok, k_adv = jax.random.split(key)
  examples = model.example_prompts
  cond = model.encode_prompts([examples[i % len(examples)] for i in range(rows)])
  # Ids of a categorical family, bits [rows, L, d] of a bitwise one.
  shape = (rows, sched.num_tokens, *model.dist.token_shape)
  high = 2 if model.dist.token_shape else vocab
  tokens = jax.random.randint(k_tok, shape, 0, high).astype(model.dist.token_dtype)
  inputs = jax.jit(model.teacher_inputs)(params, tokens)
  uniform = jnp.full((rows, sched.num_tokens), -np.log(vocab))
  return {
    'cond': jax.tree.map(jnp.asarray, cond),
    'inputs': inputs,
    'tokens': tokens,
    # The rollout's log-probs: unused by the first, on-policy, step.
    'old_logp': uniform,
    'ref_logp': uniform,
    'advantages': jax.random.normal(k_adv, (rows,)),
    'mask': jnp.ones((rows, sched.num_tokens)),
    'weights': jnp.asarray(panw.token_weights(sched, alpha)),
    'on_policy': jnp.array(1.0),
  }


def rl_update(logprob_fn, step, ref_params, state, batch, inner: int):
  """One update as `Trainer.build_batch` + `Trainer.update` run it; returns
  (state, seconds of the reference forward, seconds of each step)."""
  t = time.perf_counter()
  ref = logprob_fn(ref_params, batch['cond'], batch['inputs'], batch['tokens'])
  ref.block_until_ready()
  ref_s = time.perf_counter() - t
  batch = dict(batch, ref_logp=ref)
  step_s = []
  for i in range(inner):
    t = time.perf_counter()
    state, metrics, logp = step(state, batch)
    jax.block_until_ready((state, metrics, logp))
    step_s.append(time.perf_counter() - t)
    if i == 0:
      batch = dict(batch, old_logp=logp, on_policy=jnp.array(0.0))
  return state, ref_s, step_s


def _xla_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0)) if cost else 0.0


def main(argv):
  del argv
  config = _CONFIG.value
  model = build_model(config)
  dims, rl = model.dims, config.rl
  rows, inner = _BATCH.value or rl.prompts_per_update * rl.group_size, rl.inner_updates
  opts = SamplingOptions.from_config(config.sampling)
  alpha = Method.from_config(config, model).alpha
  params = model.init(jax.random.key(0))
  n_params = sum(x.size for x in jax.tree.leaves(params['transformer']))
  batch = make_batch(model, params, rows, alpha, jax.random.key(1))

  optimizer = grpo.make_optimizer(rl)
  step = grpo.make_train_step(
    model, opts, grpo.GrpoHParams.from_config(rl), optimizer, alpha
  )
  logprob_fn = grpo.make_logprob_fn(model, opts)
  # The reference is a copy: the step donates the state's params.
  ref_params = jax.tree.map(jnp.copy, params['transformer'])
  state = grpo.init_state(params['transformer'], optimizer)
  t0 = time.perf_counter()
  ref_args = (ref_params, batch['cond'], batch['inputs'], batch['tokens'])
  logprob_fn = logprob_fn.lower(*ref_args).compile()
  step = step.lower(state, batch).compile()
  xla_ref, xla_step = _xla_flops(logprob_fn), _xla_flops(step)
  compile_s = time.perf_counter() - t0

  n = _MATMUL_N.value
  a = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  for _ in range(_WARMUP.value):
    state, _, _ = rl_update(logprob_fn, step, ref_params, state, batch, inner)

  def timed_matmul():
    t = time.perf_counter()
    matmul(a).block_until_ready()
    matmul_s.append(time.perf_counter() - t)

  update_s, ref_s, step_s, matmul_s = [], [], [], []
  load = os.getloadavg()  # a shared host: say how busy it was
  for _ in range(_REPEATS.value):
    timed_matmul()
    state, r_s, s_s = rl_update(logprob_fn, step, ref_params, state, batch, inner)
    update_s.append(r_s + sum(s_s))
    ref_s.append(r_s)
    step_s.extend(s_s)
    timed_matmul()
  med = statistics.median
  peak = 2 * n**3 / med(matmul_s)

  cfg_rows = opts.uses_uncond and opts.policy == 'cfg'
  eff_rows = rows * (2 if cfg_rows else 1)
  num_scales = model.schedule.num_scales
  fwd = flops.forward_flops(dims, num_scales) * eff_rows
  step_flops = flops.train_flops(dims, eff_rows, num_scales, remat=False)
  update_flops = flops.rl_update_flops(dims, eff_rows, num_scales, inner)
  hw = flops.rl_update_flops(dims, eff_rows, num_scales, inner, remat=True)

  tunables = os.environ.get('GLIBC_TUNABLES', '') or 'unset (varrl_jax/hostenv.py)'
  print(
    f'device: {jax.devices()[0].device_kind} x{jax.device_count()}; '
    f'GLIBC_TUNABLES {tunables}'
  )
  print(
    f'model: {n_params / 1e6:.2f}M transformer params, {dims.num_layers} layers, '
    f'd={dims.d_model}, N = {dims.prefix_len} prefix + {model.schedule.num_tokens} '
    f'image tokens, remat={dims.remat}, attention={config.model.attention}, '
    f'dtype={config.model.dtype}'
  )
  print(
    f'update: reference forward + {inner} step(s) on {rows} rows'
    f'{" (x2 with the CFG branch)" if cfg_rows else ""}; compile {compile_s:.1f} s; '
    f'{_REPEATS.value} timed updates after {_WARMUP.value} warm-up'
  )
  print(
    f'model GFLOP: forward F x {eff_rows} rows {fwd / 1e9:.2f} (XLA {xla_ref / 1e9:.2f}), '
    f'step 3F {step_flops / 1e9:.2f} (XLA {xla_step / 1e9:.2f}), update '
    f'{update_flops / 1e9:.2f} (hardware, with remat: {hw / 1e9:.2f})'
  )
  if dims.num_layers > 1 and config.model.scan_unroll < dims.num_layers:
    print(
      'note: XLA counts a scanned loop body once; '
      f'--config.model.scan_unroll={dims.num_layers} makes its count cover every layer'
    )
  upd, stp, ref = med(update_s), med(step_s), med(ref_s)
  print(
    f'update time: median {upd * 1e3:.0f} ms (min {min(update_s) * 1e3:.0f}, max '
    f'{max(update_s) * 1e3:.0f}) = reference forward {ref * 1e3:.0f} '
    f'+ {inner} x step {stp * 1e3:.0f} (medians) -> {update_flops / upd / 1e9:.1f} '
    'GFLOP/s model'
  )
  print(
    f'matmul peak ({n}^3 f32, interleaved with the updates): median '
    f'{peak / 1e9:.1f} GFLOP/s (best {2 * n**3 / min(matmul_s) / 1e9:.1f})'
  )
  best_peak = 2 * n**3 / min(matmul_s)
  print(
    f'medians: reference forward MFU {fwd / ref / peak:.2f}, step '
    f'{step_flops / stp / peak:.2f}, update {update_flops / upd / peak:.2f}; load '
    f'average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after the timed updates'
  )
  # Other jobs only ever slow a run down, and they slow the short matmul
  # probe and the long update differently (medians gave MFU > 1 on a shared
  # host): the headline compares the fastest of each.
  print(f'grpo_step_mfu {step_flops / min(step_s) / best_peak:.2f}x')
  print(f'rl_update_mfu {update_flops / min(update_s) / best_peak:.2f}x')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
