"""Per-program XLA:CPU options: which kernels run convolutions and dots.

XLA:CPU (jaxlib 0.10) hands dots, reductions and convolutions to the
YNNPACK library by default (``xla_cpu_experimental_ynn_fusion_type``). On
this project's programs XLA's own kernels (Eigen) are faster for two of
them:

- **Convolutions**, in every program: on the project's 2-core hosts, tiny's
  decoder convolutions ran at 380-490 GFLOP/s on Eigen against 250-490 on
  YNNPACK, and ``python benchmarks/conv_backends.py`` (both in one run)
  measured the decode 1.10x faster on tiny and 1.24x at the VAR-d16 size,
  the whole KV-cached sampler 1.06x and 1.08x (its programs end in the
  decode), the tokenizer stage's step 1.08x and 0.98x (docs/performance.md,
  2026-12-06).
- **Dots, in the teacher-forced training programs** (the GRPO step, the
  reference log-probs, the transformer pretraining step: ``train=True``):
  thousands of rows per matmul, where ``python benchmarks/grpo_step.py
  --cpu_dot=both`` measured tiny's RL update 1.27x faster on Eigen (medians
  1.10x; docs/performance.md, session 20). Eigen wants long products: at
  VAR-d16 width an update of 2 rows x 78 positions ran 18% slower on it
  (`VARRL_CPU_DOT=ynn` suits such runs). The samplers' dots (a few rows per
  scale step) keep YNNPACK: there the two measured alike.

`program_options` gives a jit's ``compiler_options``: XLA's default library
fusions less the ones moved to Eigen, on CPU devices only (a TPU or GPU
program gets none). The option is experimental: where the installed jaxlib
refuses it (probed once, by compiling a small convolution with it), nothing
is set. ``VARRL_CPU_CONV`` and ``VARRL_CPU_DOT`` ('xla' or 'ynn') override
the choices for every program; 'ynn' for both keeps XLA's default.
"""

from __future__ import annotations

import functools
import os

OPTION = 'xla_cpu_experimental_ynn_fusion_type'
REDUCE = 'LIBRARY_FUSION_TYPE_REDUCE'
DOT = 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'
CONV = 'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION'
# XLA:CPU's default library fusions (individual dots, reductions and
# convolutions), less the convolutions: the samplers' and tokenizers' choice.
WITHOUT_CONV = f'{DOT},{REDUCE}'
OPT_OUT = 'VARRL_CPU_CONV'
DOT_ENV = 'VARRL_CPU_DOT'
CHOICES = ('xla', 'ynn')


def _choice(environ, name: str, value: str | None, source: str, default: str) -> str:
  if value is None:
    value = (os.environ if environ is None else environ).get(name, default).strip()
    source = name
  if value not in CHOICES:
    raise ValueError(f'{source} must be one of {CHOICES}, got {value!r}')
  return value


def conv_backend(environ=None, backend: str | None = None) -> str:
  """'xla' (the default) or 'ynn': ``backend`` if given, else
  ``VARRL_CPU_CONV``; anything else is a ValueError naming its source."""
  return _choice(environ, OPT_OUT, backend, 'conv_backend', 'xla')


def dot_backend(environ=None, backend: str | None = None, train: bool = False) -> str:
  """'xla' or 'ynn' for a program's dots: ``backend`` if given, else
  ``VARRL_CPU_DOT``, else 'xla' for a training program (``train``) and
  'ynn' for the others; anything else is a ValueError naming its source."""
  return _choice(environ, DOT_ENV, backend, 'dot_backend', 'xla' if train else 'ynn')


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


def program_options(
  devices=None,
  environ=None,
  backend: str | None = None,
  *,
  dots: str | None = None,
  train: bool = False,
):
  """``compiler_options`` for a jit that runs on ``devices`` (default: JAX's
  default devices): XLA's own convolutions (`conv_backend`; ``backend``
  overrides ``VARRL_CPU_CONV``) and, for a teacher-forced training program
  (``train``), XLA's own dots (`dot_backend`; ``dots`` overrides
  ``VARRL_CPU_DOT``), on CPU only; None elsewhere, where both libraries are
  'ynn' (XLA's default), or where the jaxlib refuses the option."""
  import jax

  conv = conv_backend(environ, backend)
  dot = dot_backend(environ, dots, train)
  if conv == dot == 'ynn':
    return None
  devices = jax.devices() if devices is None else list(devices)
  if not devices or any(d.platform != 'cpu' for d in devices):
    return None
  kept = [DOT] * (dot == 'ynn') + [REDUCE] + [CONV] * (conv == 'ynn')
  return {OPTION: ','.join(kept)} if _accepted() else None


def dots_of(options) -> str:
  """Which kernels run the dots of a program compiled with ``options``
  (`program_options`' result): 'xla' where they leave YNNPACK's dots out,
  else 'ynn' (XLA:CPU's default; also what None means on CPU)."""
  if not options or OPTION not in options:
    return 'ynn'
  return 'ynn' if DOT in options[OPTION].split(',') else 'xla'
