"""Value as Middle Return (VMR).

The horizon is split after a middle scale m. A prefix (scales 0..m) is
continued by K suffix rollouts from the same KV cache, each ending in a
terminal reward R_k; the prefix's return is the soft maximum

    V_m = eta * log( (1/K) * sum_k exp(R_k / eta) )          (eta = 1, K = 2)

which lies between the mean (eta -> inf) and the maximum (eta -> 0) of the
R_k. Prefix updates run GRPO on the prefix tokens with advantages from the
V_m of G prefixes; suffix updates run GRPO on the suffix tokens (scales > m)
with the terminal rewards. m = S - 1 (the last scale) is plain full-horizon
GRPO.

The paper names m by the pixel resolution the prefix reaches: with NextFlow's
18 scales at 1024^2 (downsampling 16), m256 is the prefix up to the 16x16
grid, i.e. 12 scales (index 11). `split_scale` accepts that name or an index.
``config.rl.vmr.m='adaptive'`` moves m during the run (`rl.adaptive_m`).
"""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from varrl_jax.models.schedule import ScaleSchedule


def value_middle_return(rewards_bk, eta: float = 1.0):
  """V_m = eta * log(mean_k exp(R_k / eta)) over the last axis (stable logsumexp)."""
  if eta <= 0:
    raise ValueError(f'config.rl.vmr.eta must be > 0, got {eta}')
  rewards_bk = jnp.asarray(rewards_bk, jnp.float32)
  k = rewards_bk.shape[-1]
  return eta * (logsumexp(rewards_bk / eta, axis=-1) - jnp.log(float(k)))


def split_scale(schedule: ScaleSchedule, m, key: str = 'config.rl.vmr.m') -> int:
  """The split scale index from an int index, 'mNNN' (pixels) or 'full'/'last'.

  Negative indices count from the end (-1 = the last scale = full horizon).
  ``key``: the config key errors name. ``config.rl.vmr.m='adaptive'`` is
  resolved by `rl.adaptive_m`, not here.
  """
  num = schedule.num_scales
  if isinstance(m, str):
    spec = m.strip().lower()
    if spec in ('full', 'last'):
      return num - 1
    match = re.fullmatch(r'm(\d+)|(-?\d+)', spec)
    if not match:
      raise ValueError(
        f"{key}={m!r}: expected a scale index, 'mNNN' (pixels, e.g. 'm256'), "
        "'full' or (config.rl.vmr.m only) 'adaptive'"
      )
    if match.group(1) is not None:
      try:
        return schedule.scale_for_resolution(int(match.group(1)))
      except ValueError as e:
        raise ValueError(f'{key}={m!r}: {e}') from None
    m = int(match.group(2))
  m = int(m)
  if m < 0:
    m += num
  if not 0 <= m < num:
    raise ValueError(f'{key}={m} out of range for {num} scales')
  return m


def stage_scales(schedule: ScaleSchedule, m: int) -> tuple[np.ndarray, np.ndarray]:
  """(prefix, suffix) bool [S]: scales s <= m and s > m."""
  s = np.arange(schedule.num_scales)
  return s <= m, s > m


def stage_tokens(schedule: ScaleSchedule, m: int) -> tuple[np.ndarray, np.ndarray]:
  """(prefix, suffix) float32 [L] token selectors of split m."""
  prefix, suffix = stage_scales(schedule, m)
  idx = schedule.scale_index
  return prefix[idx].astype(np.float32), suffix[idx].astype(np.float32)


def phase_stages(schedule: ScaleSchedule, m: int) -> tuple[dict, dict]:
  """(stage, length) of split m per phase ('full', 'prefix', 'suffix'):
  stage = (scales [S] bool, token selector float32 [L]) of the tokens the
  phase updates; length = the positions its batch holds (a prefix batch:
  those of scales <= m only, whose logits never depend on later tokens)."""
  prefix, suffix = stage_scales(schedule, m)
  everything = np.ones(schedule.num_scales, bool)
  stage = {
    'full': (everything, np.ones(schedule.num_tokens, np.float32)),
    'prefix': (prefix, prefix[schedule.scale_index].astype(np.float32)),
    'suffix': (suffix, suffix[schedule.scale_index].astype(np.float32)),
  }
  length = {
    'full': schedule.num_tokens,
    'prefix': int(schedule.offsets[prefix.sum()]),
    'suffix': schedule.num_tokens,
  }
  return stage, length
