r"""The rows layout's weight gradient (`varrl_jax/models/rows.py`) against the
plain 2-D one, on the dense layers of a config's transformer.

  python benchmarks/dense_rows.py --config=configs/tiny.py
  python benchmarks/dense_rows.py --config=configs/var_d16.py --rows=2976

A dense layer on rows X [N, K] -> X W [N, F] has the weight gradient
dW = X^T dY. The plain form contracts the one long axis N; `rows_dot_general`
contracts it as (chunk, row), N = c x N / c with c = gcd(N, WGRAD_CHUNKS).
Per layer shape of the config (attention q, k, v, o; the MLP; the head) the
two forms are timed alternating in one process (best of ``--repeats``), with
the forward product X W beside them as the speed the same data allows, and
the results are checked equal. ``--rows`` sets N (default: a suffix update's
rows x positions as `benchmarks/grpo_step.py` runs it). ``--cpu_dot``
picks the dots' kernels on CPU (`varrl_jax.xla_cpu`): YNNPACK's (the
default; where the chunked form was measured faster) or XLA's own, which
the training programs use since session 20 and where `models.rows` takes
the plain form. The last line is ``wgrad_chunked_vs_plain N.NNx``: the
plain forms' total time over the chunked forms'.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from varrl_jax import cli, xla_cpu
from varrl_jax.models import rows as rows_lib
from varrl_jax.models.family import build_model

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/tiny.py', 'Config file.')
_ROWS = flags.DEFINE_integer(
  'rows', 0, 'N, the rows of each product (0: see docstring).'
)
_REPEATS = flags.DEFINE_integer('repeats', 20, 'Timed calls of each form.')
_CPU_DOT = flags.DEFINE_enum(
  'cpu_dot', 'ynn', ['ynn', 'xla'], "The dots' kernels on CPU: YNNPACK's or XLA's."
)


def _best(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  best = math.inf
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t)
  return best


def layer_shapes(dims, vocab: int) -> list[tuple[str, int, int]]:
  """(name, K, F) of the dense layers of one block, and the head."""
  d, qd, kvd = (
    dims.d_model,
    dims.num_heads * dims.head_dim,
    dims.num_kv_heads * dims.head_dim,
  )
  return [
    ('q', d, qd),
    ('k, v', d, kvd),
    ('o', qd, d),
    ('mlp in', d, dims.mlp_dim),
    ('mlp out', dims.mlp_dim, d),
    ('head', d, vocab),
  ]


def main(argv):
  del argv
  config = _CONFIG.value
  model = build_model(config)
  dims, rl = model.dims, config.rl
  n = _ROWS.value or (
    rl.prompts_per_update
    * rl.group_size
    * rl.vmr.num_branches
    * (dims.prefix_len + model.schedule.num_tokens)
  )
  chunks = math.gcd(n, rows_lib.WGRAD_CHUNKS)
  print(
    f'device: {jax.devices()[0].device_kind} x{jax.device_count()}; N = {n} rows, '
    f'{chunks} chunks (WGRAD_CHUNKS={rows_lib.WGRAD_CHUNKS}); best of {_REPEATS.value}; '
    f'dots on {_CPU_DOT.value}'
  )
  jit = functools.partial(
    jax.jit, compiler_options=xla_cpu.program_options(dots=_CPU_DOT.value)
  )
  plain = jit(lambda x, dy: x.T @ dy)
  chunked = jit(
    lambda x, dy: jnp.einsum(
      'cnk,cnf->kf',
      x.reshape(chunks, n // chunks, -1),
      dy.reshape(chunks, n // chunks, -1),
    )
  )
  forward = jit(lambda x, w: x @ w)
  total = {'plain': 0.0, 'chunked': 0.0}
  seen = set()
  for name, k, f in layer_shapes(dims, model.vocab_size):
    if (k, f) in seen:
      continue
    seen.add((k, f))
    x = jax.random.normal(jax.random.key(0), (n, k), jnp.float32)
    dy = jax.random.normal(jax.random.key(1), (n, f), jnp.float32)
    w = jax.random.normal(jax.random.key(2), (k, f), jnp.float32)
    np.testing.assert_allclose(chunked(x, dy), plain(x, dy), rtol=2e-3, atol=2e-2)
    t_plain = t_chunked = math.inf
    for _ in range(2):  # alternate, so load changes hit both
      t_plain = min(t_plain, _best(plain, x, dy, repeats=_REPEATS.value // 2))
      t_chunked = min(t_chunked, _best(chunked, x, dy, repeats=_REPEATS.value // 2))
    t_fwd = _best(forward, x, w, repeats=_REPEATS.value // 2)
    flop = 2 * n * k * f
    total['plain'] += t_plain
    total['chunked'] += t_chunked
    print(
      f'{name:8s} K={k:5d} F={f:5d}: dW plain {flop / t_plain / 1e9:5.0f} GFLOP/s, '
      f'chunked {flop / t_chunked / 1e9:5.0f}; forward X W {flop / t_fwd / 1e9:5.0f} '
      f'({t_plain / t_chunked:.2f}x)'
    )
  print(f'wgrad_chunked_vs_plain {total["plain"] / total["chunked"]:.2f}x')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
