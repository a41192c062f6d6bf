"""The patch-matmul weight gradient equals XLA's convolution gradient, and the
convolution, its input and weight gradients equal torch's (float64, CPU): an
implementation that shares no code with the one under test."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax import lax

from varrl_jax.models import conv as conv_lib

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _grads(fn, x, w):
  def loss(x, w):
    y = fn(x, w)
    # A non-uniform cotangent, so every tap of dW is exercised differently.
    return jnp.sum(y * jnp.sin(jnp.arange(y.size, dtype=y.dtype).reshape(y.shape)))

  return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)


def _torch_conv(x, w, stride, pads):
  """(y, dx, dw) of a NHWC/HWIO convolution by torch in float64, with
  explicit ``pads`` ((top, bottom), (left, right)) and the cotangent of
  `_grads`."""
  xt = torch.tensor(np.asarray(x, np.float64)).permute(0, 3, 1, 2).requires_grad_()
  wt = torch.tensor(np.asarray(w, np.float64)).permute(3, 2, 0, 1).requires_grad_()
  (top, bottom), (left, right) = pads
  xp = torch.nn.functional.pad(xt, (left, right, top, bottom))
  y = torch.nn.functional.conv2d(xp, wt, stride=stride).permute(0, 2, 3, 1)
  cot = torch.sin(torch.arange(y.numel(), dtype=torch.float64)).reshape(y.shape)
  (y * cot).sum().backward()
  return (
    y.detach().numpy(),
    xt.grad.permute(0, 2, 3, 1).numpy(),
    wt.grad.permute(2, 3, 1, 0).numpy(),
  )


def _explicit(padding, kernel):
  """Stride-1 'SAME' / 'VALID' as ((top, bottom), (left, right))."""
  if padding == 'VALID':
    return ((0, 0), (0, 0))
  if padding == 'SAME':
    return tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel)
  return padding


@pytest.mark.parametrize(
  'kernel,padding,channels',
  [
    ((3, 3), 'SAME', (5, 7)),
    ((1, 1), 'SAME', (6, 4)),
    ((3, 3), 'VALID', (3, 8)),
    ((3, 2), ((2, 0), (1, 1)), (4, 4)),
  ],
)
def test_matmul_weight_grad_equals_xla(kernel, padding, channels):
  kx, kw = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (2, 9, 11, channels[0]))
  w = jax.random.normal(kw, (*kernel, *channels))

  def ours(x, w):
    return conv_lib.conv_general_dilated(
      x,
      w,
      (1, 1),
      padding,
      (1, 1),
      (1, 1),
      lax.conv_dimension_numbers(x.shape, w.shape, NHWC),
    )

  def xla(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=NHWC)

  assert 'custom_vjp' in str(jax.make_jaxpr(ours)(x, w))
  np.testing.assert_allclose(ours(x, w), xla(x, w), rtol=1e-6, atol=1e-6)
  (dx_ours, dw_ours), (dx_xla, dw_xla) = _grads(ours, x, w), _grads(xla, x, w)
  np.testing.assert_allclose(dx_ours, dx_xla, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dw_ours, dw_xla, rtol=1e-5, atol=1e-4)
  # The same three against torch: float32 sums of up to 2 x 9 x 11 terms.
  y_t, dx_t, dw_t = _torch_conv(x, w, 1, _explicit(padding, kernel))
  np.testing.assert_allclose(ours(x, w), y_t, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dx_ours, dx_t, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dw_ours, dw_t, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
  'kernel,padding,channels',
  [
    ((3, 3), 'SAME', (32, 3)),  # the tokenizer's output conv, scaled down
    ((3, 3), 'VALID', (18, 2)),
    ((3, 2), ((2, 0), (1, 1)), (12, 2)),
  ],
)
def test_narrow_convolution_is_a_matmul_with_the_same_values(kernel, padding, channels):
  """kh kw O <= C: one matmul and shifted sums, no convolution in the
  program; output and both gradients equal XLA's and torch's."""
  kx, kw = jax.random.split(jax.random.key(7))
  x = jax.random.normal(kx, (2, 9, 11, channels[0]))
  w = jax.random.normal(kw, (*kernel, *channels))
  assert conv_lib.is_narrow(w.shape)

  def ours(x, w):
    dn = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    return conv_lib.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn)

  def xla(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=NHWC)

  program = str(jax.make_jaxpr(jax.grad(lambda x, w: ours(x, w).sum(), (0, 1)))(x, w))
  assert 'conv_general_dilated' not in program and 'dot_general' in program
  np.testing.assert_allclose(ours(x, w), xla(x, w), rtol=1e-5, atol=1e-4)
  for a, b in zip(_grads(ours, x, w), _grads(xla, x, w), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-3)
  y_t, dx_t, dw_t = _torch_conv(x, w, 1, _explicit(padding, kernel))
  np.testing.assert_allclose(ours(x, w), y_t, rtol=1e-4, atol=1e-4)
  for a, b in zip(_grads(ours, x, w), (dx_t, dw_t), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_patches_match_an_hwio_kernel():
  x = jax.random.normal(jax.random.key(1), (1, 4, 5, 2))
  w = jax.random.normal(jax.random.key(2), (3, 3, 2, 3))
  pads = ((1, 1), (1, 1))
  p = conv_lib.patches(x, 3, 3, pads, (4, 5))
  assert p.shape == (1, 4, 5, 18)
  y = lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=NHWC)
  np.testing.assert_allclose(p @ w.reshape(18, 3), y, rtol=1e-5, atol=1e-5)


def test_other_convolutions_fall_through_to_xla():
  """Strided (or grouped) convolutions take lax's path and its gradient."""
  x = jax.random.normal(jax.random.key(3), (2, 8, 8, 4))
  w = jax.random.normal(jax.random.key(4), (3, 3, 4, 6))
  dn = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)

  def ours(x, w):
    return conv_lib.conv_general_dilated(x, w, (2, 2), 'SAME', dimension_numbers=dn)

  def xla(x, w):
    return lax.conv_general_dilated(x, w, (2, 2), 'SAME', dimension_numbers=dn)

  assert 'custom_vjp' not in str(jax.make_jaxpr(ours)(x, w))
  for a, b in zip(_grads(ours, x, w), _grads(xla, x, w), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  # Stride 2 'SAME' on 8 pixels: 4 outputs, (4 - 1) 2 + 3 - 8 = 1 pad, at the end.
  y_t, dx_t, dw_t = _torch_conv(x, w, 2, ((0, 1), (0, 1)))
  np.testing.assert_allclose(ours(x, w), y_t, rtol=1e-4, atol=1e-4)
  for a, b in zip(_grads(ours, x, w), (dx_t, dw_t), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_flax_conv_keeps_its_parameters_and_output():
  """Plugged into nn.Conv: same parameter tree, same output, same gradient."""
  x = jax.random.normal(jax.random.key(5), (2, 6, 10, 3))
  plain = nn.Conv(8, (3, 3), padding='SAME')
  fast = nn.Conv(
    8, (3, 3), padding='SAME', conv_general_dilated=conv_lib.conv_general_dilated
  )
  params = plain.init(jax.random.key(6), x)
  assert jax.tree.structure(params) == jax.tree.structure(
    fast.init(jax.random.key(6), x)
  )
  assert 'custom_vjp' in str(jax.make_jaxpr(lambda p: fast.apply(p, x))(params))

  def grads(module):
    return jax.grad(lambda p: jnp.sum(module.apply(p, x) ** 3))(params)

  np.testing.assert_allclose(fast.apply(params, x), plain.apply(params, x), rtol=1e-6)
  # And both are the convolution with nn.Conv's kernel, plus its bias.
  y_t, _, _ = _torch_conv(x, params['params']['kernel'], 1, ((1, 1), (1, 1)))
  y_t = y_t + np.asarray(params['params']['bias'])
  np.testing.assert_allclose(fast.apply(params, x), y_t, rtol=1e-4, atol=1e-5)
  for a, b in zip(
    jax.tree.leaves(grads(fast)), jax.tree.leaves(grads(plain)), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_resolve_weight_grad():
  assert conv_lib.resolve_weight_grad('auto') == 'xla'
  assert conv_lib.resolve_weight_grad('matmul') == 'matmul'
  assert conv_lib.resolve_weight_grad('xla') == 'xla'
  with pytest.raises(ValueError, match='config.tokenizer.conv_weight_grad'):
    conv_lib.resolve_weight_grad('fast')


def test_for_conv_takes_narrow_convolutions_on_cpu_only(monkeypatch):
  assert conv_lib.for_conv('matmul') is conv_lib.conv_general_dilated
  monkeypatch.setattr(conv_lib.jax, 'default_backend', lambda: 'cpu')
  assert conv_lib.for_conv('xla') is conv_lib.conv_general_dilated_xla
  monkeypatch.setattr(conv_lib.jax, 'default_backend', lambda: 'tpu')
  assert conv_lib.for_conv('xla') is None  # flax's own lax convolution
