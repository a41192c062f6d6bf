"""`models/rows.py`: the rows layout's dot_general and reshaping helper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from varrl_jax import xla_cpu
from varrl_jax.models import rows as rows_lib


@pytest.fixture(autouse=True)
def _highest_precision():
  with jax.default_matmul_precision('highest'):
    yield


def _rand(key, shape):
  return jax.random.normal(jax.random.key(key), shape, jnp.float32)


@pytest.mark.parametrize(
  'x_shape, w_shape, chunks',
  [
    ((48, 6), (6, 5), 16),  # gcd(48, 16) = 16 chunks of 3 rows
    ((12, 3, 2), (3, 2, 4), 4),  # two contracting axes (an output projection)
    ((7, 6), (6, 2, 3), 1),  # feature axes (q, k, v heads); 7 rows: 1 chunk
  ],
)
def test_rows_dot_general_value_and_gradients(x_shape, w_shape, chunks):
  """Forward and both gradients equal a float64 numpy reference, and the
  weight gradient is contracted over gcd(N, WGRAD_CHUNKS) chunks."""
  assert np.gcd(x_shape[0], rows_lib.WGRAD_CHUNKS) == chunks
  x, w = _rand(0, x_shape), _rand(1, w_shape)
  nk = len(x_shape) - 1
  dims = ((tuple(range(1, nk + 1)), tuple(range(nk))), ((), ()))
  ct = _rand(2, (x_shape[0], *w_shape[nk:]))

  def loss(x, w):
    return jnp.sum(rows_lib.rows_dot_general(x, w, dims) * ct)

  out = rows_lib.rows_dot_general(x, w, dims)
  dx, dw = jax.grad(loss, argnums=(0, 1))(x, w)
  x64, w64, ct64 = (np.asarray(a, np.float64) for a in (x, w, ct))
  k = int(np.prod(x_shape[1:]))
  x2, w2, ct2 = x64.reshape(-1, k), w64.reshape(k, -1), ct64.reshape(x_shape[0], -1)
  np.testing.assert_allclose(out, (x2 @ w2).reshape(out.shape), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, (ct2 @ w2.T).reshape(x_shape), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, (x2.T @ ct2).reshape(w_shape), rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(dw).max()) > 0.1


@pytest.mark.parametrize('chunks, want', [(1, 1), (4, 4), (5, 1), (32, 16)])
def test_weight_grad_chunks_sets_the_contraction(chunks, want):
  """Inside `weight_grad_chunks(c)` the weight gradient contracts gcd(N, c)
  chunks of N = 48 rows (1: the plain 2-D X^T dY), with the same values;
  outside it `WGRAD_CHUNKS` again. `chunks_for` picks 1 on XLA's dots."""
  x, w, ct = _rand(0, (48, 6)), _rand(1, (6, 5)), _rand(2, (48, 5))
  dims = (((1,), (0,)), ((), ()))

  def loss(x, w):
    return jnp.sum(rows_lib.rows_dot_general(x, w, dims) * ct)

  def jaxpr():  # a new function each time: jit's cache keys on the function
    return str(jax.make_jaxpr(jax.grad(lambda x, w: loss(x, w), argnums=1))(x, w))

  with rows_lib.weight_grad_chunks(chunks):
    inside = jaxpr()
    dw = jax.grad(lambda x, w: loss(x, w), argnums=1)(x, w)
  np.testing.assert_allclose(dw, np.float64(x).T @ np.float64(ct), rtol=1e-5, atol=1e-5)
  # The chunked form reshapes X to [c, N / c, K]; the plain one does not.
  assert (f'f32[{want},{48 // want},6]' in inside) == (want > 1), inside
  assert 'f32[16,3,6]' in jaxpr()
  assert 'f32[4,12,6]' in rows_lib.traced_with_chunks(jaxpr, 4)()
  # A program's compiler options pick the form: XLA's dots, plain.
  eigen = {xla_cpu.OPTION: xla_cpu.REDUCE}
  assert 'f32[16,3,6]' not in rows_lib.traced_for_program(jaxpr, eigen)()
  assert 'f32[16,3,6]' in rows_lib.traced_for_program(jaxpr, None)()
  assert rows_lib.chunks_for('xla') == 1
  assert rows_lib.chunks_for('ynn') == rows_lib.WGRAD_CHUNKS
  with pytest.raises(ValueError, match='chunks must be >= 1'):
    with rows_lib.weight_grad_chunks(0):
      pass


def test_rows_dot_general_leaves_other_contractions_to_lax():
  """Batched inputs, batch dimensions, a precision: lax.dot_general as is."""
  x, w = _rand(0, (2, 5, 6)), _rand(1, (6, 4))
  dims = (((2,), (0,)), ((), ()))
  np.testing.assert_array_equal(
    rows_lib.rows_dot_general(x, w, dims), lax.dot_general(x, w, dims)
  )
  a, b = _rand(2, (3, 5, 6)), _rand(3, (3, 6, 4))
  bdims = (((2,), (1,)), ((0,), (0,)))
  np.testing.assert_array_equal(
    rows_lib.rows_dot_general(a, b, bdims), lax.dot_general(a, b, bdims)
  )
  x2 = _rand(4, (16, 6))
  jaxpr = jax.make_jaxpr(
    lambda x: rows_lib.rows_dot_general(
      x, w, (((1,), (0,)), ((), ())), precision=lax.Precision.HIGHEST
    )
  )(x2)
  assert 'custom_vjp' not in str(jaxpr)
  jaxpr = jax.make_jaxpr(
    lambda x: rows_lib.rows_dot_general(x, w, (((1,), (0,)), ((), ())))
  )(x2)
  assert 'custom_vjp' in str(jaxpr)


def test_on_rows_reshapes_every_output_back():
  x = _rand(0, (2, 3, 4))
  seen = []

  def fn(r):
    seen.append(r.shape)
    return {'a': r * 2, 'b': (r[:, :2], r.sum(-1, keepdims=True))}

  out = rows_lib.on_rows(fn, x, True)
  assert seen == [(6, 4)]
  np.testing.assert_array_equal(out['a'], x * 2)
  np.testing.assert_array_equal(out['b'][0], x[..., :2])
  assert out['b'][1].shape == (2, 3, 1)
  assert rows_lib.on_rows(lambda r: r.shape, x, False) == (2, 3, 4)
