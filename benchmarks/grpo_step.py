r"""GRPO step MFU on this host: analytic FLOPs / step time vs a measured matmul peak.

  python benchmarks/grpo_step.py --config=configs/tiny.py
  python benchmarks/grpo_step.py --config=configs/tiny.py --batch_size=32
  python benchmarks/grpo_step.py --config=configs/var_d16.py --batch_size=4

Builds the jitted GRPO train step exactly as the RL loop does
(`rl.grpo.make_optimizer`, `init_state`, `make_train_step`; one device, no
mesh) on a batch of ``--batch_size`` full-length rows (default: a prefix
update, ``rl.prompts_per_update x rl.group_size``) with random tokens (the
cost of a step does not depend on their values). Each repeat times one step
and one f32 ``n x n x n`` matmul back to back, so both see the same load on
the machine; the figures are medians over ``--repeats`` after ``--warmup``
steps.

Analytic FLOPs of one step (multiply-add = 2 FLOPs). Per row, with N = T_t + L
positions (text, image tokens), l layers, width d, h query and g kv heads of
size D, SwiGLU width f, latent width C, codebook size V:

    P_l  = d (h + 2 g) D + h D d + 3 d f        matmul weights of one layer
    F    = 2 N l P_l                            q, k, v, o and the MLP
         + 4 l h D sum_q vis(q)                 q k^T and p v over the keys
                                                query q sees (block-causal)
         + 2 L (C d + d V)                      input projection and head
    step = (3 + r) F rows                       forward + backward (2 F);
                                                r = 1 with rematerialisation

``rows`` doubles with CFG log-probs (``sampling.policy='cfg'`` and a guidance
scale != 1). The step's other work (log-softmax, the loss, AdamW) is
O(params + rows L V), not counted. MFU = (step FLOPs / median step time) /
(median matmul FLOP/s). XLA's own count (``cost_analysis``) is printed
beside it: it also counts the dense [T, T] scores that 'plain' attention
computes and masks, and the elementwise work. The last line is
``grpo_step_mfu N.NNx``, achieved FLOP/s over the measured peak.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from varrl_jax import cli
from varrl_jax.models import transformer as tr_lib
from varrl_jax.models.family import build_model
from varrl_jax.policy import SamplingOptions
from varrl_jax.rl import grpo, panw
from varrl_jax.rl.loop import Method

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/tiny.py', 'Config file.')
_BATCH = flags.DEFINE_integer(
  'batch_size', None, 'Rows per step (default: prompts_per_update x group_size).'
)
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed (step, matmul) pairs.')
_MATMUL_N = flags.DEFINE_integer('matmul_n', 2048, 'Side of the f32 peak matmul.')


def layer_matmul_params(cfg: tr_lib.TransformerConfig) -> int:
  """P_l: weights of one block's matmuls (q, k, v, o, SwiGLU gate/up/down)."""
  d, h, g, hd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  return d * (h + 2 * g) * hd + h * hd * d + 3 * d * cfg.mlp_dim


def visible_keys(cfg: tr_lib.TransformerConfig) -> int:
  """sum over the N positions of the keys each one sees (block-causal)."""
  seg = tr_lib.sequence_segments(cfg, 0, cfg.seq_len)
  return int((seg[None, :] <= seg[:, None]).sum())


def forward_flops(cfg: tr_lib.TransformerConfig) -> dict[str, float]:
  """FLOPs of one teacher-forced forward of one row, by term (docstring: F)."""
  n, l_img = cfg.seq_len, cfg.schedule.num_tokens
  return {
    'dense': 2.0 * n * cfg.num_layers * layer_matmul_params(cfg),
    'attention': 4.0
    * cfg.num_layers
    * cfg.num_heads
    * cfg.head_dim
    * visible_keys(cfg),
    'in/out': 2.0
    * l_img
    * (cfg.latent_dim * cfg.d_model + cfg.d_model * cfg.vocab_size),
  }


def make_batch(model, params, rows: int, alpha: float, key) -> dict:
  """A train-step batch of ``rows`` random full-length rows (see grpo docstring)."""
  sched, vocab = model.schedule, model.vocab_size
  k_tok, k_adv = jax.random.split(key)
  examples = model.example_prompts
  cond = model.encode_prompts([examples[i % len(examples)] for i in range(rows)])
  # Ids of a categorical family, bits [rows, L, d] of a bitwise one.
  shape = (rows, sched.num_tokens, *model.dist.token_shape)
  high = 2 if model.dist.token_shape else vocab
  tokens = jax.random.randint(k_tok, shape, 0, high).astype(model.dist.token_dtype)
  inputs = jax.jit(model.teacher_inputs)(params, tokens)
  return {
    'cond': jax.tree.map(jnp.asarray, cond),
    'inputs': inputs,
    'tokens': tokens,
    # Policy == reference == old policy: the first inner update of a batch.
    'old_logp': jnp.full((rows, sched.num_tokens), -np.log(vocab)),
    'ref_logp': jnp.full((rows, sched.num_tokens), -np.log(vocab)),
    'advantages': jax.random.normal(k_adv, (rows,)),
    'mask': jnp.ones((rows, sched.num_tokens)),
    'weights': jnp.asarray(panw.token_weights(sched, alpha)),
    'on_policy': jnp.array(1.0),
  }


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def main(argv):
  del argv
  config = _CONFIG.value
  model = build_model(config)
  cfg = model.cfg
  rl = config.rl
  rows = _BATCH.value or rl.prompts_per_update * rl.group_size
  opts = SamplingOptions.from_config(config.sampling)
  alpha = Method.from_config(config, model).alpha
  params = model.init(jax.random.key(0))
  n_params = sum(x.size for x in jax.tree.leaves(params['transformer']))
  batch = make_batch(model, params, rows, alpha, jax.random.key(1))

  optimizer = grpo.make_optimizer(rl)
  step = grpo.make_train_step(
    model, opts, grpo.GrpoHParams.from_config(rl), optimizer, alpha
  )
  state = grpo.init_state(params['transformer'], optimizer)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost.get('flops', 0.0)) if cost else 0.0

  n = _MATMUL_N.value
  a = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  for _ in range(_WARMUP.value):
    state, metrics, _ = compiled(state, batch)
  jax.block_until_ready(metrics)

  step_s, matmul_s = [], []
  for _ in range(_REPEATS.value):
    t = time.perf_counter()
    state, metrics, _ = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    step_s.append(time.perf_counter() - t)
    matmul_s.append(_timed(lambda: matmul(a).block_until_ready()))
  step_med, matmul_med = statistics.median(step_s), statistics.median(matmul_s)
  peak = 2 * n**3 / matmul_med

  cfg_rows = opts.uses_uncond and opts.policy == 'cfg'
  fwd = forward_flops(cfg)
  passes = 3 + (cfg.remat != 'none')
  eff_rows = rows * (2 if cfg_rows else 1)
  flops = passes * sum(fwd.values()) * eff_rows
  achieved = flops / step_med

  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}')
  print(
    f'model: {n_params / 1e6:.2f}M transformer params, {cfg.num_layers} layers, '
    f'd={cfg.d_model}, N = {cfg.text_len} text + {cfg.schedule.num_tokens} image '
    f'tokens, remat={cfg.remat}, attention={cfg.attention}'
  )
  print(
    f'batch: {rows} rows{" (x2 with the CFG branch)" if cfg_rows else ""}; '
    f'compile {compile_s:.1f} s; {_REPEATS.value} timed steps after {_WARMUP.value} warm-up'
  )
  terms = ', '.join(f'{k} {v / 1e9:.3f}' for k, v in fwd.items())
  print(f'forward GFLOP per row: {terms} (sum {sum(fwd.values()) / 1e9:.3f})')
  print(
    f'step GFLOP: {flops / 1e9:.1f} analytic ({passes} x forward x {eff_rows} rows), '
    f'{xla_flops / 1e9:.1f} XLA cost_analysis (ratio {xla_flops / flops:.2f})'
  )
  if cfg.scan_unroll < cfg.num_layers:
    print(
      'note: XLA counts a scanned loop body once; '
      f'--config.model.scan_unroll={cfg.num_layers} makes its count cover every layer'
    )
  print(
    f'step time: median {step_med * 1e3:.0f} ms (min {min(step_s) * 1e3:.0f}, '
    f'max {max(step_s) * 1e3:.0f}) -> {achieved / 1e9:.1f} GFLOP/s analytic'
  )
  print(
    f'matmul peak ({n}^3 f32, interleaved with the steps): median '
    f'{peak / 1e9:.1f} GFLOP/s (best {2 * n**3 / min(matmul_s) / 1e9:.1f})'
  )
  print(f'grpo_step_mfu {achieved / peak:.2f}x')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
