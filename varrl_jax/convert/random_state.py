"""Seeded random state dicts for parity tests against official PyTorch code.

Reference outputs of an official model (``tools/var_reference.py``) are
recorded with weights from `random_state_dict`, so a test needs only the
parameter names and shapes stored next to the outputs to rebuild the exact
weights. The values are chosen so that every parameter visibly moves the
outputs (a near-identity network would make a 1e-4 parity check vacuous).

The rules, by parameter name (a dotted ``torch`` ``named_parameters`` key; its
last segment is the *leaf*, the one before it the *parent*), first match wins.
``N`` is a standard normal draw of the parameter's full shape:

==  =========================================================  ==================
#   which parameters                                           value
==  =========================================================  ==================
1   leaf starts with ``scale_mul`` (``scale_mul_1H11``)          ln 4 + 0.1 N, then
                                                               the first element
                                                               (head 0) := 5.0
2   parent is ``embedding`` (a VQ codebook)                    N
3   parent is ``class_emb``                                    N
4   any segment starts with ``pos_`` (``pos_start``,           0.5 N
    ``pos_1LC``, ...) or is ``lvl_embed``
5   leaf is ``ada_gss``                                        N / sqrt(shape[-1])
6   1-d ``weight`` whose parent names a norm (contains         1 + 0.1 N
    ``norm``, or is ``ln``/``gn``/``bn`` optionally followed
    by digits or ``_...``)
7   1-d ``bias`` with such a parent                            0.1 N
8   any other 1-d or 0-d parameter (biases, ``q_bias``,        0.1 N
    ``v_bias``, ...)
9   any other parameter (>= 2-d weights)                       N / sqrt(fan_in),
                                                               fan_in =
                                                               prod(shape[1:])
==  =========================================================  ==================

Rule 1's 5.0 lies above the official attention's ``clamp_max(ln 100)`` (about
4.605), so the clamp is exercised; the other heads stay below it.

Each key draws from its own generator,
``np.random.default_rng([seed, zlib.crc32(key.encode())])``, with one call
``rng.standard_normal(shape)`` (float64); the value is formed in float64 and
cast to float32 last. A key's values therefore depend only on ``seed``, the key
and its shape, not on which other keys are present or their order.
"""

from __future__ import annotations

import math
import re
import zlib

import numpy as np

_NORM_PARENT = re.compile(r'(norm|^(ln|gn|bn)(\d+|_.*)?$)')
# Above the official ``scale_mul_1H11.clamp_max(log(100))``, so the clamp acts.
SCALE_MUL_HEAD0 = 5.0


def _is_norm_parent(parent: str) -> bool:
  return bool(_NORM_PARENT.search(parent.lower()))


def random_param(key: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
  """The float32 value of parameter ``key`` (rules in the module docstring)."""
  shape = tuple(int(s) for s in shape)
  rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
  n = rng.standard_normal(shape)
  segments = key.split('.')
  leaf = segments[-1]
  parent = segments[-2] if len(segments) > 1 else ''
  if leaf.startswith('scale_mul'):
    value = math.log(4.0) + 0.1 * n
    value.reshape(-1)[:1] = SCALE_MUL_HEAD0
  elif parent in ('embedding', 'class_emb'):
    value = n
  elif any(s.startswith('pos_') or s == 'lvl_embed' for s in segments):
    value = 0.5 * n
  elif leaf == 'ada_gss':
    value = n / math.sqrt(shape[-1])
  elif len(shape) == 1 and leaf == 'weight' and _is_norm_parent(parent):
    value = 1.0 + 0.1 * n
  elif len(shape) <= 1:
    value = 0.1 * n
  else:
    value = n / math.sqrt(math.prod(shape[1:]))
  return np.asarray(value, dtype=np.float32)


def random_state_dict(
  shapes: dict[str, tuple[int, ...]], seed: int
) -> dict[str, np.ndarray]:
  """``{key: float32 array}`` for every ``key: shape`` in ``shapes``.

  Deterministic per key (see the module docstring for the rules), so tests
  rebuild the weights of a reference file from its recorded shapes alone.
  """
  return {k: random_param(k, tuple(s), seed) for k, s in shapes.items()}
