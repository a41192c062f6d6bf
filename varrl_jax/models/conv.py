"""The tokenizer's convolutions: a weight gradient as a matmul over image
patches (opt-in), and narrow convolutions as one matmul.

XLA-CPU on YNNPACK computed the forward pass of a 3x3 convolution well but
its weight gradient dW poorly: at batch 16, 40x160 and 32 -> 32 channels,
forward 33 ms and forward + dW 390 ms on this project's 2-core host
(2026-11-26). The patch matmul below was steadier and somewhat faster in the
whole tokenizer step then: ``benchmarks/tokenizer_step.py`` measured
1.08x-1.33x over four side-by-side runs (the last paragraph says what
holds now).
For a stride-1 NHWC/HWIO convolution with kernel (kh, kw) and explicit
padding,

    dW[i, j, c, o] = sum_{b, y, x} xpad[b, y + i, x + j, c] * g[b, y, x, o],

which is one matmul [kh kw C, B H W] x [B H W, O] over the stacked patches of
the padded input. `conv_general_dilated` below has the signature of
``lax.conv_general_dilated`` (so it plugs into ``nn.Conv(conv_general_dilated=
...)`` and leaves parameter names and shapes unchanged); it computes the
forward pass and the input gradient with XLA's convolution and the weight
gradient with that matmul. Other layouts, strides, dilations and groups fall
through to ``lax.conv_general_dilated`` unchanged.

A convolution with few output channels (kh kw O <= C: the tokenizer's last
conv, 32 -> 3 on tiny) is one matmul and kh kw shifted sums instead,

    y[b, y, x, o] = sum_{i, j} P[b, y + i - pad, x + j - pad, (i, j, o)],
    P = x @ W as [C, kh kw O],

because XLA-CPU's convolution with 3 output channels is memory-bound at a
few GFLOP/s: 6.2 ms for that conv at batch 8 against 2.9 ms this way
(2026-12-06, 2-core host; 60 vs 16 ms for 128 -> 3 at 256x256, batch 2).
Its gradients are matmuls too, and the product [B, H, W, kh kw O] is no
wider than the input.

The tokenizer's convolutions (and those of the VAR and Infinity VAEs) go
through `for_conv`: `conv_general_dilated` ('matmul') or, on the CPU
backend, `conv_general_dilated_xla` ('xla', XLA's weight gradient); both
take `narrow` for few output channels. The choice is
``config.tokenizer.conv_weight_grad``: 'matmul', 'xla', or 'auto'. 'auto'
was the matmul on the CPU backend while XLA-CPU ran convolutions on
YNNPACK; with XLA's own convolution kernels (`varrl_jax.xla_cpu`, the
tokenizer stage's default since 2026-12-06) XLA's weight gradient is the
faster one: ``benchmarks/tokenizer_step.py`` measured the matmul at 0.67x
-0.71x of it over four runs on a 2-core host (0.95x with
``VARRL_CPU_CONV=ynn``), so 'auto' is now 'xla' on every backend. RL never
differentiates the tokenizer, so this only affects tokenizer pretraining.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

WEIGHT_GRADS = ('auto', 'matmul', 'xla')
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def resolve_weight_grad(choice: str) -> str:
  """'auto' -> 'xla' (see the module doc); checks the choice."""
  if choice not in WEIGHT_GRADS:
    raise ValueError(
      f'config.tokenizer.conv_weight_grad={choice!r}; expected one of {WEIGHT_GRADS}'
    )
  return 'xla' if choice == 'auto' else choice


def _plain(x, w, pads, precision):
  return lax.conv_general_dilated(
    x, w, (1, 1), pads, dimension_numbers=_NHWC, precision=precision
  )


def patches(x_bhwc: jnp.ndarray, kh: int, kw: int, pads, out_hw) -> jnp.ndarray:
  """[B, H_out, W_out, kh * kw * C]: the input window of every output pixel.

  Tap order (i, j, c), row-major, matches an HWIO kernel reshaped to
  [kh * kw * C, O].
  """
  xp = jnp.pad(x_bhwc, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  ho, wo = out_hw
  taps = [xp[:, i : i + ho, j : j + wo, :] for i in range(kh) for j in range(kw)]
  return jnp.concatenate(taps, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_matmul_dw(x, w, pads, precision):
  return _plain(x, w, pads, precision)


def _fwd(x, w, pads, precision):
  return _plain(x, w, pads, precision), (x, w)


def _bwd(pads, precision, res, g):
  x, w = res
  kh, kw, c, o = w.shape
  _, vjp_x = jax.vjp(lambda x: _plain(x, w, pads, precision), x)
  (dx,) = vjp_x(g)
  p = patches(x, kh, kw, pads, g.shape[1:3]).reshape(-1, kh * kw * c)
  dw = jnp.matmul(p.T, g.reshape(-1, o), precision=precision)
  return dx, dw.reshape(kh, kw, c, o).astype(w.dtype)


_conv_matmul_dw.defvjp(_fwd, _bwd)


def narrow(x, w, pads, precision=None):
  """A stride-1 NHWC/HWIO convolution with explicit ``pads`` as one matmul
  [B H W, C] x [C, kh kw O] and kh kw shifted sums of its output's channel
  blocks (for few output channels: see the module doc)."""
  kh, kw, c, o = w.shape
  h, wd = x.shape[1:3]
  ho = h + pads[0][0] + pads[0][1] - kh + 1
  wo = wd + pads[1][0] + pads[1][1] - kw + 1
  taps = w.transpose(2, 0, 1, 3).reshape(c, kh * kw * o)
  p = jnp.matmul(x, taps, precision=precision)  # [B, H, W, (i, j, o)]
  p = jnp.pad(p, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  out = None
  for i in range(kh):
    for j in range(kw):
      t = (i * kw + j) * o
      tap = p[:, i : i + ho, j : j + wo, t : t + o]
      out = tap if out is None else out + tap
  return out


def is_narrow(kernel_shape) -> bool:
  """Whether an HWIO kernel has few enough outputs for `narrow`."""
  kh, kw, c, o = kernel_shape
  return kh * kw > 1 and kh * kw * o <= c


def _explicit_pads(padding, in_hw, kernel_hw) -> tuple[tuple[int, int], ...] | None:
  if isinstance(padding, str):
    if padding.upper() not in ('SAME', 'VALID'):
      return None
    return tuple(lax.padtype_to_pads(in_hw, kernel_hw, (1, 1), padding.upper()))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _conv(
  weight_grad: str,
  lhs,
  rhs,
  window_strides: Sequence[int],
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision=None,
  preferred_element_type=None,
):
  """``lax.conv_general_dilated``, as `narrow` for few output channels, else
  with the patch-matmul weight gradient when ``weight_grad == 'matmul'``.

  Used for 2-D, stride-1, undilated, ungrouped NHWC/HWIO convolutions (what
  flax's ``nn.Conv`` issues for the tokenizer); anything else goes to
  ``lax.conv_general_dilated`` as is.
  """
  simple = (
    lhs.ndim == 4
    and tuple(window_strides) == (1, 1)
    and all(d in (None, 1) for d in (lhs_dilation or (None,)))
    and all(d in (None, 1) for d in (rhs_dilation or (None,)))
    and feature_group_count == 1
    and batch_group_count == 1
    and preferred_element_type is None
    and _is_nhwc(dimension_numbers)
  )
  pads = _explicit_pads(padding, lhs.shape[1:3], rhs.shape[:2]) if simple else None
  if pads is not None and is_narrow(rhs.shape):
    return narrow(lhs, rhs, pads, precision)
  if pads is None or weight_grad != 'matmul':
    return lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      batch_group_count=batch_group_count,
      precision=precision,
      preferred_element_type=preferred_element_type,
    )
  return _conv_matmul_dw(lhs, rhs, pads, precision)


# ``nn.Conv(conv_general_dilated=...)`` for each weight-gradient choice: the
# same parameters; narrow convolutions as `narrow` in both.
conv_general_dilated = functools.partial(_conv, 'matmul')
conv_general_dilated_xla = functools.partial(_conv, 'xla')


def for_conv(weight_grad: str = 'xla'):
  """``nn.Conv``'s ``conv_general_dilated`` for a model built now: the patch
  matmul with 'matmul'; else `narrow` for few output channels on the CPU
  backend, and flax's default (None) on TPU and GPU, where it is not
  measured."""
  if weight_grad == 'matmul':
    return conv_general_dilated
  return conv_general_dilated_xla if jax.default_backend() == 'cpu' else None


def _is_nhwc(dimension_numbers) -> bool:
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return dimension_numbers == lax.conv_dimension_numbers(
      (1, 1, 1, 1), (1, 1, 1, 1), _NHWC
    )
  return tuple(dimension_numbers) == _NHWC
