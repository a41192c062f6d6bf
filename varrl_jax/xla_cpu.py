"""Per-program XLA:CPU options: convolutions on XLA's own kernels.

XLA:CPU (jaxlib 0.10) hands dots, reductions and convolutions to the
YNNPACK library by default (``xla_cpu_experimental_ynn_fusion_type``). On
the convolutions of this project's tokenizers XLA's own kernels (Eigen) are
faster: on the project's 2-core hosts, tiny's decoder convolutions ran at
380-490 GFLOP/s on Eigen against 250-490 on YNNPACK, and
``python benchmarks/conv_backends.py`` (both in one run) measured the decode
1.10x faster on tiny and 1.24x at the VAR-d16 size, the whole KV-cached
sampler 1.06x and 1.08x (its programs end in the decode), the tokenizer
stage's step 1.08x and 0.98x (docs/performance.md, 2026-12-06).

`program_options` gives the ``compiler_options`` of a jit that runs
convolutions: XLA's default library fusions less the convolutions, on CPU
devices only (a TPU or GPU program gets none). The option is experimental:
where the installed jaxlib refuses it (probed once, by compiling a small
convolution with it), nothing is set. ``VARRL_CPU_CONV=ynn`` keeps XLA's
default.
"""

from __future__ import annotations

import functools
import os

OPTION = 'xla_cpu_experimental_ynn_fusion_type'
# XLA:CPU's default library fusions (individual dots, reductions and
# convolutions), less the convolutions.
WITHOUT_CONV = 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'
OPT_OUT = 'VARRL_CPU_CONV'
CHOICES = ('xla', 'ynn')


def conv_backend(environ=None, backend: str | None = None) -> str:
  """'xla' (the default) or 'ynn': ``backend`` if given, else
  ``VARRL_CPU_CONV``; anything else is a ValueError naming its source."""
  if backend is not None:
    value, source = backend, 'conv_backend'
  else:
    value = (os.environ if environ is None else environ).get(OPT_OUT, 'xla').strip()
    source = OPT_OUT
  if value not in CHOICES:
    raise ValueError(f'{source} must be one of {CHOICES}, got {value!r}')
  return value


@functools.cache
def _accepted() -> bool:
  """Whether this jaxlib's CPU compiler takes the option (one small compile)."""
  import jax
  import jax.numpy as jnp

  cpu = jax.local_devices(backend='cpu')[0]
  x = jax.device_put(jnp.zeros((1, 4, 4, 2), jnp.float32), cpu)
  w = jax.device_put(jnp.zeros((3, 3, 2, 2), jnp.float32), cpu)
  conv = functools.partial(
    jax.lax.conv_general_dilated,
    window_strides=(1, 1),
    padding='SAME',
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )
  try:
    jax.jit(conv).lower(x, w).compile({OPTION: WITHOUT_CONV})
  except Exception:  # noqa: BLE001 - any refusal means: leave XLA's default
    return False
  return True


def program_options(devices=None, environ=None, backend: str | None = None):
  """``compiler_options`` for a jit holding convolutions that runs on
  ``devices`` (default: JAX's default devices): XLA's own convolutions on
  CPU, None elsewhere. ``backend`` ('xla' or 'ynn') overrides
  ``VARRL_CPU_CONV`` (`conv_backend`); 'ynn', or a jaxlib that refuses the
  option, gives None (XLA's default)."""
  import jax

  if conv_backend(environ, backend) != 'xla':
    return None
  devices = jax.devices() if devices is None else list(devices)
  if not devices or any(d.platform != 'cpu' for d in devices):
    return None
  return {OPTION: WITHOUT_CONV} if _accepted() else None
