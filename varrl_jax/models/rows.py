"""Dense layers on rows: the layout of ``config.model.dense_layout``.

'rows' applies every dense layer of a block to its input as [B T, d] rows
(`on_rows`) instead of [B, T, d], and computes the layer's weight gradient
in a form XLA:CPU runs near its matmul peak (`rows_dot_general`). The
transformers of every family (ours, `var_official`, `infinity`) take it
through ``flat_rows`` in their configs (`resolve_dense_layout`).

Why, measured on XLA:CPU (2 cores, f32; docs/design.md "The GRPO update on
XLA:CPU", items 2 and 4): a weight gradient contracting (B, T) of a 3-D
input is canonicalised with a transposing copy of the [B, T, out] gradient,
fused into the elementwise op that produces it (tiny's GRPO step: 372 ->
290 ms as rows). And on YNNPACK's dots the 2-D weight gradient
dW = X^T dY, X [N, K], dY [N, F], contracting one long axis N into a small
[K, F] output ran at 250-440 GFLOP/s against 360-500 for the forward
product X W; splitting N into c chunks and contracting (chunk, row)
together, ``dW = sum_{c,n} X[c,n,:]^T dY[c,n,:]``, ran at 350-490
(`benchmarks/dense_rows.py` on tiny's and VAR-d16's layers).

On XLA's own (Eigen) dots, which the training programs use on CPU since
session 20 (`varrl_jax.xla_cpu`), the chunked form costs a transposing copy
of X per layer and the plain X^T dY is faster (`benchmarks/dense_rows.py
--cpu_dot=xla`). A training program therefore traces its layers inside
`weight_grad_chunks`, with the chunk count that suits its dot library
(`traced_for_program`): `chunks_for` gives 1 (plain) on XLA's dots,
`WGRAD_CHUNKS` on YNNPACK's.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from varrl_jax import xla_cpu

DENSE_LAYOUTS = ('auto', 'rows', 'batched')

# The chunks of the row axis in a weight gradient on YNNPACK's dots:
# gcd(N, WGRAD_CHUNKS).
WGRAD_CHUNKS = 16
_CHUNKS = contextvars.ContextVar('weight_grad_chunks', default=WGRAD_CHUNKS)


def chunks_for(dot_backend: str) -> int:
  """The weight-gradient chunks that suit a program whose dots run on
  ``dot_backend`` ('xla' or 'ynn', `varrl_jax.xla_cpu.dot_backend`)."""
  return 1 if dot_backend == 'xla' else WGRAD_CHUNKS


@contextlib.contextmanager
def weight_grad_chunks(chunks: int):
  """Layers traced inside contract their weight gradients over gcd(N,
  ``chunks``) chunks of their rows (1: the plain X^T dY); outside, over
  gcd(N, `WGRAD_CHUNKS`). The count is read when a layer is traced, and jit
  caches a trace by its function: trace each setting through its own
  function (`traced_with_chunks` makes one)."""
  if chunks < 1:
    raise ValueError(f'weight-gradient chunks must be >= 1, got {chunks}')
  token = _CHUNKS.set(int(chunks))
  try:
    yield
  finally:
    _CHUNKS.reset(token)


def traced_with_chunks(fn: Callable, chunks: int) -> Callable:
  """``fn`` traced inside ``weight_grad_chunks(chunks)`` (to be jitted)."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with weight_grad_chunks(chunks):
      return fn(*args, **kwargs)

  return wrapped


def traced_for_program(fn: Callable, compiler_options) -> Callable:
  """``fn`` traced with the weight-gradient chunks that suit the dots of a
  program compiled with ``compiler_options`` (`xla_cpu.program_options`)."""
  return traced_with_chunks(fn, chunks_for(xla_cpu.dots_of(compiler_options)))


def resolve_dense_layout(choice: str) -> bool:
  """``config.model.dense_layout`` -> the transformers' ``flat_rows``.

  'rows': dense layers on [B T, d] rows with `rows_dot_general`; 'batched':
  [B, T, d] as is, with `lax.dot_general`. On TPU the reshape is a relayout
  copy whenever T is not a multiple of the 8-row tile, so 'auto' is 'rows'
  on the CPU backend only (`varrl_jax.aot`, which compiles for TPU from a
  CPU host, resolves it to 'batched').
  """
  if choice not in DENSE_LAYOUTS:
    raise ValueError(
      f'config.model.dense_layout={choice!r}; expected one of {DENSE_LAYOUTS}'
    )
  if choice == 'auto':
    return jax.default_backend() == 'cpu'
  return choice == 'rows'


def on_rows(fn: Callable, x: jnp.ndarray, flat: bool):
  """``fn`` on ``x`` [B, T, ...] seen as [B T, ...] rows when ``flat``; every
  output of ``fn`` (an array or a pytree of them) comes back as [B, T, ...].
  Not ``flat``: ``fn(x)`` as is."""
  if not flat:
    return fn(x)
  lead = x.shape[:2]
  out = fn(x.reshape(-1, *x.shape[2:]))
  return jax.tree.map(lambda a: a.reshape(*lead, *a.shape[1:]), out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul(x_nk, w_kf, chunks: int):
  return x_nk @ w_kf


def _matmul_fwd(x_nk, w_kf, chunks):
  return x_nk @ w_kf, (x_nk, w_kf)


def _matmul_bwd(chunks, res, dy_nf):
  x_nk, w_kf = res
  n, k = x_nk.shape
  dx = (dy_nf @ w_kf.T).astype(x_nk.dtype)
  if chunks == 1:
    dw = lax.dot_general(x_nk, dy_nf, (((0,), (0,)), ((), ())))
  else:
    dw = jnp.einsum(
      'cnk,cnf->kf',
      x_nk.reshape(chunks, n // chunks, k),
      dy_nf.reshape(chunks, n // chunks, -1),
    )
  return dx, dw.astype(w_kf.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def rows_dot_general(
  lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None
):
  """`lax.dot_general` of rows [N, *K] by a kernel [*K, *F] -> [N, *F], with
  the weight gradient contracted over gcd(N, chunks) chunks of N, chunks
  as `weight_grad_chunks` sets it (the module docstring). Any other
  contraction, a precision or an element type goes to `lax.dot_general`
  unchanged. For ``nn.DenseGeneral``'s ``dot_general``."""
  (lc, rc), (lb, rb) = dimension_numbers
  nk = len(lc)
  plain = (
    lb
    or rb
    or precision is not None
    or preferred_element_type is not None
    or lhs.ndim != nk + 1
    or tuple(lc) != tuple(range(1, lhs.ndim))
    or tuple(rc) != tuple(range(nk))
  )
  if plain:
    return lax.dot_general(
      lhs, rhs, dimension_numbers, precision, preferred_element_type
    )
  n, k = lhs.shape[0], math.prod(lhs.shape[1:])
  features = rhs.shape[nk:]
  out = _matmul(lhs.reshape(n, k), rhs.reshape(k, -1), math.gcd(n, _CHUNKS.get()))
  return out.reshape(n, *features)
