"""`xla_cpu`: which programs get XLA:CPU's own convolutions, and that they
compute what YNNPACK's do."""

import types

import jax
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
