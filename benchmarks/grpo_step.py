r"""MFU of the RL updates on this host: model FLOPs / update time vs a measured matmul peak.

  python benchmarks/grpo_step.py --config=configs/tiny.py
  python benchmarks/grpo_step.py --config=configs/var_d16.py --batch_size=1 \
      --config.model.num_layers=4      # VAR-d16 width and sequence, 4 of 16 layers

Runs the device work of the RL updates as `rl.loop.Trainer` does (one
device, no mesh): per update the reference policy's teacher-forced log-probs
(`rl.grpo.make_logprob_fn`, the KL term's log pi_ref), then
``rl.inner_updates`` jitted GRPO steps (`make_train_step`), the first on
policy (it takes its own log-probs as log pi_old) and the later ones on its
returned log-probs. With VMR (``rl.mode`` other than vanilla) the loop runs
``rl.vmr.prefix_updates`` prefix updates to ``suffix_updates`` suffix
updates: a prefix update trains P G rows (one per prefix) on the positions
of scales <= m only (their logits never depend on later tokens, so the loop
truncates the batch there), a suffix update P G K full-length rows. Each
phase is measured on its own batch; ``--phase=cycle`` (default) reports
both and the cycle's MFU (total model FLOPs of one cycle over its time),
``prefix``/``suffix``/``full`` one phase. ``--batch_size`` replaces P G,
the rows of a prefix update (a suffix or full update trains K times as
many). Tokens are random (the cost does not depend on their
values); the next-scale inputs are made once beforehand, as
`Trainer.build_batch` does with the frozen tokenizer. Each repeat times the
phase's update (reference forward + steps, each blocked on so the pieces
can be reported) between two f32 ``n x n x n`` matmuls, so both see the
same load on the machine; over ``--repeats`` after ``--warmup`` updates.

FLOPs are `varrl_jax.models.flops` (its docstring gives F, one row's
forward over the phase's scales). ``rows`` doubles with CFG log-probs
(``sampling.policy='cfg'`` and a guidance scale != 1: the policy is the
guided distribution). Model FLOPs of an update, without the forward that
rematerialisation recomputes:

    update = rows F (1 + 3 inner)        (`flops.rl_update_flops`)
    step   = 3 F rows

MFU = (model FLOPs / fastest time) / (fastest matmul FLOP/s): on a shared
host other jobs only slow a run down, and they slow the short matmul and
the long update differently, so medians are printed beside. XLA's own
counts (``cost_analysis``) are printed beside: they also count the masked
scores of 'plain' attention and elementwise work, and a scanned layer
loop's body once. The CLIs run with glibc's malloc on transparent huge pages and, on a
CPU-only host, on a kept heap (`varrl_jax.hostenv`); so does this script:
its first line gives the tunables, and each phase its minor page faults per
update.

On CPU the programs' dots run on XLA's own kernels (`varrl_jax.xla_cpu`);
``--cpu_dot=both`` compiles every program twice, with XLA's dots and with
YNNPACK's, alternates their updates in each repeat and prints
``xla_dots_vs_ynn_dots`` (the cycle's best time on YNNPACK over its best on
XLA) before the headline, which is XLA's. The last lines are
``grpo_step_mfu N.NNx`` (the steps alone, over the cycle) and
``rl_update_mfu N.NNx``, the updates' achieved FLOP/s over the peak.
"""

from __future__ import annotations

import dataclasses
import os
import resource
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
from varrl_jax.rl import grpo, panw, vmr
from varrl_jax.rl.loop import Method

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/tiny.py', 'Config file.')
_BATCH = flags.DEFINE_integer(
  'batch_size',
  None,
  'Prefix rows per step; suffix and full steps take K times as many, as the loop '
  "does (default: the loop's rows, prompts_per_update x group_size).",
)
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed updates after compiling.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed (update, matmul) pairs.')
_MATMUL_N = flags.DEFINE_integer('matmul_n', 2048, 'Side of the f32 peak matmul.')
_PHASE = flags.DEFINE_enum(
  'phase', 'cycle', ['cycle', 'prefix', 'suffix', 'full'], 'Which updates to time.'
)
_CPU_DOT = flags.DEFINE_enum(
  'cpu_dot',
  'default',
  ['default', 'xla', 'ynn', 'both'],
  "Kernels of the programs' dots on CPU (`varrl_jax.xla_cpu`): the programs' "
  "default ('xla' unless VARRL_CPU_DOT says otherwise), XLA's own, YNNPACK's, "
  'or both, alternating in one run (the headline is the first, xla).',
)


def make_batch(model, params, rows: int, n: int, weights, key) -> dict:
  """A train-step batch of ``rows`` random rows of the first ``n`` positions
  (see grpo docstring); ``ref_logp`` is filled in by the update."""
  sched, vocab = model.schedule, model.vocab_size
  k_tok, k_adv = jax.random.split(key)
  examples = model.example_prompts
  cond = model.encode_prompts([examples[i % len(examples)] for i in range(rows)])
  # Ids of a categorical family, bits [rows, L, d] of a bitwise one.
  shape = (rows, sched.num_tokens, *model.dist.token_shape)
  high = 2 if model.dist.token_shape else vocab
  tokens = jax.random.randint(k_tok, shape, 0, high).astype(model.dist.token_dtype)
  inputs = jax.jit(model.teacher_inputs)(params, tokens)
  uniform = jnp.full((rows, n), -np.log(vocab))
  return {
    'cond': jax.tree.map(jnp.asarray, cond),
    'inputs': inputs[:, :n],
    'tokens': tokens[:, :n],
    # The rollout's log-probs: unused by the first, on-policy, step.
    'old_logp': uniform,
    'ref_logp': uniform,
    'advantages': jax.random.normal(k_adv, (rows,)),
    'mask': jnp.ones((rows, n)),
    'weights': jnp.asarray(np.asarray(weights)[:n]),
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


@dataclasses.dataclass
class Phase:
  """One kind of update: its rows, scales and share of a cycle, and timings."""

  name: str
  rows: int
  num_scales: int
  count: int  # updates of this phase per cycle
  update_s: list = dataclasses.field(default_factory=list)
  ref_s: list = dataclasses.field(default_factory=list)
  step_s: list = dataclasses.field(default_factory=list)
  faults: list = dataclasses.field(default_factory=list)  # minor page faults


def phases_of(config, model, method) -> list[Phase]:
  """The phases of ``--phase`` with the loop's rows and scales."""
  rl, sched = config.rl, model.schedule
  pg = rl.prompts_per_update * rl.group_size
  if not method.use_vmr:
    # Every rollout samples K branches per prefix; a full update trains all.
    out = [Phase('full', pg * rl.vmr.num_branches, sched.num_scales, 1)]
  else:
    out = [
      Phase('prefix', pg, method.m + 1, int(rl.vmr.prefix_updates)),
      Phase(
        'suffix', pg * rl.vmr.num_branches, sched.num_scales, int(rl.vmr.suffix_updates)
      ),
    ]
  want = _PHASE.value
  if want != 'cycle':
    names = [p.name for p in out]
    out = [p for p in out if p.name == want]
    if not out:
      raise app.UsageError(f'--phase={want}: this config runs {names} updates')
  if _BATCH.value:  # the loop's proportions: K suffix rows per prefix row
    for p in out:
      p.rows = _BATCH.value * (1 if p.name == 'prefix' else rl.vmr.num_branches)
  return out


def main(argv):
  del argv
  config = _CONFIG.value
  model = build_model(config)
  dims, rl = model.dims, config.rl
  inner = rl.inner_updates
  opts = SamplingOptions.from_config(config.sampling)
  method = Method.from_config(config, model)
  choice = _CPU_DOT.value
  variants = {'both': ['xla', 'ynn'], 'default': [None]}.get(choice, [choice])
  runs = {v: phases_of(config, model, method) for v in variants}
  params = model.init(jax.random.key(0))
  n_params = sum(x.size for x in jax.tree.leaves(params['transformer']))
  optimizer = grpo.make_optimizer(rl)
  hp = grpo.GrpoHParams.from_config(rl)
  # The reference is a copy: the step donates the state's params.
  ref_params = jax.tree.map(jnp.copy, params['transformer'])
  state = grpo.init_state(params['transformer'], optimizer)
  sched = model.schedule
  stages = vmr.phase_stages(sched, method.m)[0]
  batches, programs, xla = {}, {}, {}
  t0 = time.perf_counter()
  for p in runs[variants[0]]:
    n = int(sched.offsets[p.num_scales])
    weights = panw.token_weights(sched, method.alpha, stages[p.name][0])
    batches[p.name] = make_batch(model, params, p.rows, n, weights, jax.random.key(1))
  for v in variants:
    step_fn = grpo.make_train_step(
      model, opts, hp, optimizer, method.alpha, dot_backend=v
    )
    logprob_fn = grpo.make_logprob_fn(model, opts, dot_backend=v)
    for name, batch in batches.items():
      ref_args = (ref_params, batch['cond'], batch['inputs'], batch['tokens'])
      lp = logprob_fn.lower(*ref_args).compile()
      st = step_fn.lower(state, batch).compile()
      programs[v, name] = (lp, st)
      xla[name] = (_xla_flops(lp), _xla_flops(st))
  compile_s = time.perf_counter() - t0

  n = _MATMUL_N.value
  a = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  for v in variants:
    for name, batch in batches.items():
      lp, st = programs[v, name]
      for _ in range(_WARMUP.value):
        state, _, _ = rl_update(lp, st, ref_params, state, batch, inner)
  matmul_s = []

  def timed_matmul():
    t = time.perf_counter()
    matmul(a).block_until_ready()
    matmul_s.append(time.perf_counter() - t)

  load = os.getloadavg()  # a shared host: say how busy it was
  for _ in range(_REPEATS.value):
    for v in variants:
      for p in runs[v]:
        lp, st = programs[v, p.name]
        timed_matmul()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        state, r_s, s_s = rl_update(lp, st, ref_params, state, batches[p.name], inner)
        p.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
        p.update_s.append(r_s + sum(s_s))
        p.ref_s.append(r_s)
        p.step_s.extend(s_s)
        timed_matmul()
  med = statistics.median
  peak = 2 * n**3 / med(matmul_s)
  best_peak = 2 * n**3 / min(matmul_s)

  cfg_rows = opts.uses_uncond and opts.policy == 'cfg'
  tunables = os.environ.get('GLIBC_TUNABLES', '') or 'unset (varrl_jax/hostenv.py)'
  tunables = tunables.replace('glibc.malloc.', '')
  print(
    f'device: {jax.devices()[0].device_kind} x{jax.device_count()}; '
    f'GLIBC_TUNABLES {tunables}'
  )
  print(
    f'model: {n_params / 1e6:.2f}M transformer params, {dims.num_layers} layers, '
    f'd={dims.d_model}, N = {dims.prefix_len} prefix + {sched.num_tokens} '
    f'image tokens, remat={dims.remat}, attention={config.model.attention}, '
    f'dtype={config.model.dtype}, mode={rl.mode} (m={method.m})'
  )
  print(
    f'updates: reference forward + {inner} step(s){" (rows x2 with the CFG branch)" if cfg_rows else ""}; '
    f'compile {compile_s:.1f} s; {_REPEATS.value} timed updates per phase after '
    f'{_WARMUP.value} warm-up'
  )
  if dims.num_layers > 1 and config.model.scan_unroll < dims.num_layers:
    print(
      'note: XLA counts a scanned loop body once; '
      f'--config.model.scan_unroll={dims.num_layers} makes its count cover every layer'
    )
  totals = {}
  for v in variants:
    if v is not None:
      print(f'== dots on {"XLA" if v == "xla" else "YNNPACK"} kernels (--cpu_dot={v})')
    totals[v] = report(runs[v], model, inner, cfg_rows, xla, peak, best_peak)
  print(
    f'matmul peak ({n}^3 f32, interleaved with the updates): median '
    f'{peak / 1e9:.1f} GFLOP/s (best {best_peak / 1e9:.1f}); load average '
    f'{load[0]:.1f} before, {os.getloadavg()[0]:.1f} after the timed updates'
  )
  if len(variants) > 1:
    (_, x_best, x_med, _, _), (_, y_best, y_med, _, _) = totals['xla'], totals['ynn']
    print(
      f'xla_dots_vs_ynn_dots {y_best / x_best:.2f}x (best updates; medians '
      f'{y_med / x_med:.2f}x)'
    )
  cyc_flops, cyc_best, cyc_med, step_flops_c, step_best = totals[variants[0]]
  print(f'medians: update MFU {cyc_flops / cyc_med / peak:.2f}')
  # Other jobs only ever slow a run down, and they slow the short matmul
  # probe and the long update differently (medians gave MFU > 1 on a shared
  # host): the headline compares the fastest of each.
  print(f'grpo_step_mfu {step_flops_c / step_best / best_peak:.2f}x')
  print(f'rl_update_mfu {cyc_flops / cyc_best / best_peak:.2f}x')


def report(phases, model, inner, cfg_rows, xla, peak, best_peak):
  """Prints each phase's lines; returns the cycle's (model FLOPs, best and
  median seconds, the steps' model FLOPs and best seconds)."""
  med, dims = statistics.median, model.dims
  cyc_flops = cyc_best = cyc_med = step_flops_c = step_best = 0.0
  for p in phases:
    eff_rows = p.rows * (2 if cfg_rows else 1)
    fwd = flops.forward_flops(dims, p.num_scales) * eff_rows
    step_flops = flops.train_flops(dims, eff_rows, p.num_scales, remat=False)
    update_flops = flops.rl_update_flops(dims, eff_rows, p.num_scales, inner)
    upd, stp, ref = med(p.update_s), med(p.step_s), med(p.ref_s)
    positions = dims.prefix_len + int(model.schedule.offsets[p.num_scales])
    print(
      f'{p.name} x{p.count} per cycle: {p.rows} rows x {positions} '
      f'positions ({p.num_scales} scales); model GFLOP forward {fwd / 1e9:.2f} (XLA '
      f'{xla[p.name][0] / 1e9:.2f}), step {step_flops / 1e9:.2f} (XLA '
      f'{xla[p.name][1] / 1e9:.2f}), update {update_flops / 1e9:.2f}'
    )
    print(
      f'  time: median {upd * 1e3:.0f} ms (min {min(p.update_s) * 1e3:.0f}) = reference '
      f'forward {ref * 1e3:.0f} + {inner} x step {stp * 1e3:.0f} (medians); MFU best/best '
      f'update {update_flops / min(p.update_s) / best_peak:.2f}, step '
      f'{step_flops / min(p.step_s) / best_peak:.2f}; medians: forward '
      f'{fwd / ref / peak:.2f}, step {step_flops / stp / peak:.2f}, update '
      f'{update_flops / upd / peak:.2f}; minor page faults per update '
      f'{med(p.faults):.0f} (median)'
    )
    cyc_flops += p.count * update_flops
    cyc_best += p.count * min(p.update_s)
    cyc_med += p.count * upd
    step_flops_c += p.count * inner * step_flops
    step_best += p.count * inner * min(p.step_s)
  if len(phases) > 1:
    print(
      f'cycle ({" + ".join(f"{p.count} {p.name}" for p in phases)}): '
      f'{cyc_flops / 1e9:.1f} GFLOP in {cyc_best:.2f} s (best; medians {cyc_med:.2f} s) '
      f'-> {cyc_flops / cyc_best / 1e9:.1f} GFLOP/s'
    )
  return cyc_flops, cyc_best, cyc_med, step_flops_c, step_best


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
