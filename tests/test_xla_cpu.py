"""`xla_cpu`: which programs get XLA:CPU's own convolutions and dots, and
that they compute what YNNPACK's do."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varrl_jax import xla_cpu

CPU = types.SimpleNamespace(platform='cpu')
TPU = types.SimpleNamespace(platform='tpu')


def test_program_options_only_for_cpu_programs(monkeypatch):
  monkeypatch.setattr(xla_cpu, '_accepted', lambda: True)
  want = {xla_cpu.OPTION: xla_cpu.WITHOUT_CONV}
  assert xla_cpu.program_options([CPU, CPU], environ={}) == want
  assert xla_cpu.program_options([CPU], environ={'VARRL_CPU_CONV': 'xla'}) == want
  # An accelerator program, or one with a TPU device among its devices.
  assert xla_cpu.program_options([TPU], environ={}) is None
  assert xla_cpu.program_options([CPU, TPU], environ={}) is None
  assert xla_cpu.program_options([CPU], environ={'VARRL_CPU_CONV': 'ynn'}) is None
  # A jaxlib that refuses the option: XLA's default.
  monkeypatch.setattr(xla_cpu, '_accepted', lambda: False)
  assert xla_cpu.program_options([CPU], environ={}) is None


def test_training_programs_take_xla_dots_unless_told(monkeypatch):
  monkeypatch.setattr(xla_cpu, '_accepted', lambda: True)
  reduce_only = {xla_cpu.OPTION: xla_cpu.REDUCE}
  without_conv = {xla_cpu.OPTION: xla_cpu.WITHOUT_CONV}
  assert xla_cpu.program_options([CPU], environ={}, train=True) == reduce_only
  # VARRL_CPU_DOT overrides the program's default, the argument overrides both.
  env = {'VARRL_CPU_DOT': 'ynn'}
  assert xla_cpu.program_options([CPU], environ=env, train=True) == without_conv
  assert (
    xla_cpu.program_options([CPU], environ=env, dots='xla', train=True) == reduce_only
  )
  assert xla_cpu.program_options([CPU], environ={'VARRL_CPU_DOT': 'xla'}) == reduce_only
  # YNNPACK convolutions and XLA dots; both on YNNPACK: XLA's default.
  conv_ynn = {'VARRL_CPU_CONV': 'ynn'}
  assert xla_cpu.program_options([CPU], environ=conv_ynn, train=True) == {
    xla_cpu.OPTION: f'{xla_cpu.REDUCE},{xla_cpu.CONV}'
  }
  assert xla_cpu.program_options([CPU], environ={**conv_ynn, **env}, train=True) is None
  assert xla_cpu.program_options([TPU], environ={}, train=True) is None
  with pytest.raises(ValueError, match='VARRL_CPU_DOT must be one of'):
    xla_cpu.program_options([CPU], environ={'VARRL_CPU_DOT': 'eigen'}, train=True)
  with pytest.raises(ValueError, match='dot_backend must be one of'):
    xla_cpu.program_options([CPU], environ={}, dots='onednn')
  # Which kernels a program's options leave its dots on.
  assert xla_cpu.dots_of(reduce_only) == 'xla'
  assert xla_cpu.dots_of(without_conv) == 'ynn'
  assert xla_cpu.dots_of(None) == 'ynn'


def test_a_bad_choice_names_its_source():
  with pytest.raises(ValueError, match='VARRL_CPU_CONV must be one of'):
    xla_cpu.conv_backend({'VARRL_CPU_CONV': 'eigen'})
  # An explicit choice (Sampler's or the tokenizer step's conv_backend) is
  # checked too, not taken as 'not xla'.
  with pytest.raises(ValueError, match='conv_backend must be one of'):
    xla_cpu.program_options([CPU], environ={}, backend='eigen')
  assert xla_cpu.conv_backend({'VARRL_CPU_CONV': 'ynn'}, backend='xla') == 'xla'


def test_xla_convolutions_compute_what_ynnpack_ones_do():
  options = xla_cpu.program_options()
  if options is None:
    pytest.skip('this jaxlib does not take the option')
  x = jax.random.normal(jax.random.key(0), (2, 10, 40, 16))
  w = jax.random.normal(jax.random.key(1), (3, 3, 16, 8)) / 12.0

  def conv(x, w):
    return jax.nn.silu(
      jax.lax.conv_general_dilated(
        x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
      )
    ).sum((1, 2))

  ours = jax.jit(conv, compiler_options=options).lower(x, w).compile()
  default = jax.jit(conv).lower(x, w).compile()
  np.testing.assert_allclose(ours(x, w), default(x, w), rtol=1e-5, atol=1e-5)


def test_xla_dots_compute_what_ynnpack_ones_do():
  """A training program's dots (a dense layer, its two gradients) on XLA's
  kernels against XLA:CPU's default."""
  options = xla_cpu.program_options(train=True)
  if options is None:
    pytest.skip('not a CPU backend, or this jaxlib does not take the option')
  assert xla_cpu.dots_of(options) == 'xla'
  x = jax.random.normal(jax.random.key(0), (96, 64))
  w = jax.random.normal(jax.random.key(1), (64, 48)) / 8.0

  def loss(x, w):
    return jnp.sum(jax.nn.silu(x @ w) ** 2)

  grad = jax.value_and_grad(loss, argnums=(0, 1))
  ours = jax.jit(grad, compiler_options=options).lower(x, w).compile()(x, w)
  default = jax.jit(grad).lower(x, w).compile()(x, w)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(default)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
