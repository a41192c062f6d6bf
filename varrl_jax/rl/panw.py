"""Per-Action Normalization Weighting (PANW).

Scale s holds n_s = h_s * w_s tokens (actions). A plain per-token mean lets
the finest scales, with most of the tokens, dominate the update. PANW weighs
every token of scale s by

    k_s = n_s^(-alpha)                                   (alpha = 0.6 in the paper)

and normalizes by the weighted token count of the scales being updated
(the stage S' of the update: all scales, the prefix s <= m or the suffix
s > m):

    loss = sum_{s in S'} k_s sum_{i in s} mask_i l_i / sum_{s in S'} k_s n_s.

alpha = 0 is the plain per-token mean over the stage (masked tokens still
count in the denominator, so a mask removes signal instead of re-scaling the
rest); alpha = 1 gives every scale the same total weight 1 / |S'|.
Everything here is a static numpy constant of the schedule.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from varrl_jax.models.schedule import ScaleSchedule


def scale_weights(schedule: ScaleSchedule, alpha: float) -> np.ndarray:
  """k_s = n_s^(-alpha), float32 [S]."""
  return (schedule.counts.astype(np.float64) ** (-float(alpha))).astype(np.float32)


def token_weights(
  schedule: ScaleSchedule, alpha: float, stage_scales: np.ndarray | None = None
) -> np.ndarray:
  """w_i = k_{s(i)} / sum_{s in S'} k_s n_s for tokens of the stage, else 0; [L].

  ``stage_scales``: bool [S] selecting S' (default: every scale). The
  weights of the stage's tokens sum to exactly 1.
  """
  k = scale_weights(schedule, alpha).astype(np.float64)
  stage = np.ones(schedule.num_scales, bool) if stage_scales is None else stage_scales
  stage = np.asarray(stage, bool)
  if stage.shape != (schedule.num_scales,) or not stage.any():
    raise ValueError(
      f'stage_scales must be a non-empty bool [S={schedule.num_scales}] mask'
    )
  k = np.where(stage, k, 0.0)
  z = float(np.sum(k * schedule.counts))
  return (k / z)[schedule.scale_index].astype(np.float32)


def weighted_sum(per_token_bl, weights_l, mask_bl):
  """mean_b sum_i w_i mask_bi l_bi: the PANW reduction of a per-token loss.

  Tokens with zero weight are selected out (not multiplied by 0), so an
  overflow on a masked token cannot turn the sum into NaN.
  """
  w = mask_bl * weights_l[None, :]
  return jnp.where(w != 0, per_token_bl * w, 0.0).sum(axis=-1).mean()
