"""Which rows an update trains, with their advantages and MP masks (host side).

Per phase (`rl.loop` module docstring; ``ro.shape`` = (P, G, K)):

- ``prefix``: branch 0 of every prefix (P G rows); A from the G values
  V_m = eta log mean_k exp(R_k / eta) of a prompt; the MP mask from the
  union of the prefix's K branches' boxes, and ``mp/scale{s}/*`` statistics
  of how far the K branches agree;
- ``suffix``: every branch (P G K rows); A from the terminal rewards grouped
  by ``config.rl.vmr.suffix_group`` ('prompt' or 'prefix');
- ``full``: every branch; A over the G K samples of a prompt.

Everything here is numpy on the host: identical in every process of a pod.
"""

from __future__ import annotations

import numpy as np

from varrl_jax.models.schedule import ScaleSchedule
from varrl_jax.rl import grpo, masks, vmr
from varrl_jax.rl.method import Method


def mask_rows(config, method: Method, schedule: ScaleSchedule, boxes, n_rows: int):
  """[n_rows, L] MP masks from per-row boxes (all ones when MP is off or
  ``boxes`` is None: the reward gives no regions)."""
  mp = config.rl.mp
  if not method.use_mp or boxes is None:
    return np.ones((n_rows, schedule.num_tokens), np.float32)
  return masks.batch_masks(
    boxes,
    schedule,
    dilation=mp.dilation,
    mode=mp.propagation,
    floor=mp.floor,
    empty=mp.empty,
  )


def mp_stats(
  config, method: Method, schedule: ScaleSchedule, boxes_rk, keys=None
) -> dict[str, float]:
  """``mp/scale{s}/*`` metrics (`masks.branch_mask_stats`, `masks.stats_metrics`)
  of rows of K branch box lists; {} when MP is off or ``boxes_rk`` is None."""
  mp = config.rl.mp
  if not method.use_mp or boxes_rk is None:
    return {}
  stats = masks.branch_mask_stats(
    boxes_rk, schedule, dilation=mp.dilation, mode=mp.propagation, empty=mp.empty
  )
  return masks.stats_metrics(stats, keys)


def phase_rows(
  config, method: Method, schedule: ScaleSchedule, shape, scored, phase: str
):
  """(rows [R] into the P G K rollout rows, advantages [R], MP masks [R, L],
  stats) of a ``phase`` update of a rollout of ``shape`` (P, G, K) scored as
  ``scored`` (`rollout.Scored`: rewards [P, G, K], boxes per row or None)."""
  rl = config.rl
  p, g, k = shape
  rewards = scored.rewards  # [P, G, K]
  stats = {}
  if phase == 'prefix':
    values = np.asarray(vmr.value_middle_return(rewards, rl.vmr.eta))  # [P, G]
    adv = np.asarray(grpo.group_advantages(values, rl.adv_eps)).reshape(-1)
    rows = np.arange(0, p * g * k, k)  # branch 0 of every prefix
    # The prefix's mask comes from the union of its K branches' boxes (a
    # branch without text must not turn the union into a full mask).
    union = None
    if scored.boxes is not None:
      union = [
        sum((list(b) for b in scored.boxes[r * k : (r + 1) * k]), [])
        for r in range(p * g)
      ]
    mask = mask_rows(config, method, schedule, union, p * g)
    # How much the K branches agree on where the text is (paper: K = 4 vs MP).
    if union is not None:
      stats.update(
        mp_stats(config, method, schedule, [scored.boxes[r : r + k] for r in rows])
      )
    stats['vmr/value_mean'] = float(values.mean())
    stats['vmr/value_minus_mean_reward'] = float((values - rewards.mean(-1)).mean())
    return rows, adv, mask, stats
  if phase == 'suffix':
    if rl.vmr.suffix_group == 'prompt':
      adv = grpo.group_advantages(rewards.reshape(p, g * k), rl.adv_eps)
    elif rl.vmr.suffix_group == 'prefix':
      adv = grpo.group_advantages(rewards, rl.adv_eps)
    else:
      raise ValueError(
        "config.rl.vmr.suffix_group must be 'prompt' or 'prefix', got "
        f'{rl.vmr.suffix_group!r}'
      )
  else:
    adv = grpo.group_advantages(rewards.reshape(p, g * k), rl.adv_eps)
  adv = np.asarray(adv).reshape(-1)
  rows = np.arange(p * g * k)
  mask = mask_rows(config, method, schedule, scored.boxes, p * g * k)
  if scored.boxes is not None:
    stats.update(
      mp_stats(
        config, method, schedule, [[b] for b in scored.boxes], keys=('coverage',)
      )
    )
  return rows, adv, mask, stats
