"""Adaptive VMR split m (``config.rl.vmr.m='adaptive'``).

The paper (arXiv 2601.02256, Table 3a) picks the split scale m by hand:
m128 reaches the best accuracy, m256 is the one it keeps. Here m moves
online, one scale at a time, steered by a signal every VMR update already
has: the share of the reward variance that the prefix explains.

**Signal.** A VMR rollout holds rewards R[p, g, k] of P prompts x G
prefixes x K suffix branches. Per prompt, one-way ANOVA over the G prefix
groups of K branches gives unbiased estimates of the within-prefix variance
(the suffix's part) and of the between-prefix variance (the prefix's part):

    W_p = mean_g var_k(R[p, g, :])                      (ddof 1)
    B_p = var_g(mean_k R[p, g, :]) - W_p / K             (ddof 1)

pooled over the prompts whose G K rewards are not all equal,

    share = clip(sum_p B_p / (sum_p B_p + sum_p W_p), 0, 1)

(nan when no prompt has any variance, or G < 2 or K < 2). This is the
intraclass correlation of R within a prefix: Var(E[R | prefix_m]) / Var(R)
given the prompt. As the prefix grows (m up) it fixes more of the image, so
by the law of total variance the true share never decreases with m: a
monotone signal, and the controller below is a stochastic search for the m
where it crosses ``target``. Share near 1: the prefix already decides the
reward (the split is late: the K branches of a prefix agree, suffix
updates see almost no advantage of their own). Share near 0: the prefix
hardly matters (the split is early: V_m's differences between prefixes are
mostly branch noise, and prefix updates chase it).

**Controller.** ``ema <- decay * ema + (1 - decay) * share`` over the
updates' estimates (a nan estimate is skipped; the first one sets it).
After every ``every`` updates (update u with (u + 1) % every == 0):
m <- m - 1 if ema > target + band, m + 1 if ema < target - band, else m,
clamped to [min, max]. After a move the EMA restarts empty, and an estimate
made at another split than the current one is skipped: the EMA averages
shares of the current m only (with the overlapped pipeline the first
update after a move still trains on a rollout sampled before it). Without
the restart, shares of the old m would keep pulling the EMA past the band
after a move and m would overshoot. The restart does not stop every
oscillation: where share(m) > target + band but share(m - 1) < target -
band (no scale's share falls inside the band, likely on few coarse
scales), m alternates between the two, spending half the updates at each;
the logged ``vmr/m`` shows it.

**Which m an update uses.** The m of rollout u is fixed when its sampling
is dispatched (`Controller.split_for`), and update u trains with that m
(its prefix/suffix stages and the prefix batch length), whatever the
controller decided meanwhile. With ``rl.pipeline='sync'`` that is the m
after update u-1's decision; with 'overlap' rollout u is dispatched before
update u-1's rewards are read, so a move reaches the rollouts one update
later.

**Exact resume.** `Controller.record` (m, EMA, updates seen, and the m of a
rollout in flight) goes into the train checkpoint's run record
(``vmr_split``); a resumed run restores it and continues as the
uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from varrl_jax.models.schedule import ScaleSchedule
from varrl_jax.rl import vmr

ADAPTIVE = 'adaptive'


def prefix_share(rewards_pgk) -> float:
  """The share of the reward variance explained by the prefix (module doc).

  ``rewards_pgk``: [P, G, K] rewards of P prompts x G prefixes x K branches.
  Returns a float in [0, 1], or nan when it is not defined.
  """
  r = np.asarray(rewards_pgk, np.float64)
  if r.ndim != 3:
    raise ValueError(f'prefix_share: rewards must be [P, G, K], got shape {r.shape}')
  p, g, k = r.shape
  if g < 2 or k < 2:
    return math.nan
  within = r.var(axis=2, ddof=1).mean(axis=1)  # W_p [P]
  between = r.mean(axis=2).var(axis=1, ddof=1) - within / k  # B_p [P]
  varied = r.reshape(p, g * k).var(axis=1) > 0
  if not varied.any():
    return math.nan
  b, w = between[varied].sum(), within[varied].sum()
  # b + w = sum_p var_g(means) + (1 - 1/K) W_p > 0 for a varied prompt.
  return float(np.clip(b / (b + w), 0.0, 1.0))


def _split(schedule: ScaleSchedule, value, key: str) -> int:
  try:
    return vmr.split_scale(schedule, value, key=key)
  except ValueError as e:
    message = str(e)
    if not message.startswith(key):
      message = f'{key}={value!r}: {message}'
    raise ValueError(message) from None


@dataclasses.dataclass(frozen=True)
class Settings:
  """``config.rl.vmr.adaptive``, resolved to scale indices (config.py)."""

  start: int
  target: float
  band: float
  decay: float
  every: int
  lo: int
  hi: int

  @classmethod
  def from_config(cls, config, schedule: ScaleSchedule) -> Settings:
    """Checks ``config.rl.vmr.adaptive``; one ValueError naming the key."""
    rl, a = config.rl, config.rl.vmr.adaptive
    name = 'config.rl.vmr.adaptive'
    last = schedule.num_scales - 1
    lo = _split(schedule, a.min, f'{name}.min')
    hi = _split(schedule, a.max, f'{name}.max')
    if hi >= last:
      raise ValueError(
        f'{name}.max={a.max!r} is scale {hi}, the last one (full-horizon GRPO, no '
        f'split); at most {last - 1} for these {last + 1} scales'
      )
    if lo > hi:
      raise ValueError(f'{name}.min={a.min!r} (scale {lo}) is above max (scale {hi})')
    if str(a.start).strip().lower() == 'middle':
      start = (lo + hi) // 2
    else:
      start = _split(schedule, a.start, f'{name}.start')
    if not lo <= start <= hi:
      raise ValueError(
        f'{name}.start={a.start!r} (scale {start}) is outside [min, max] = [{lo}, {hi}]'
      )
    target, band, decay = float(a.target), float(a.band), float(a.decay)
    if not 0.0 < target < 1.0:
      raise ValueError(f'{name}.target must be in (0, 1), got {a.target}')
    if not 0.0 <= band < min(target, 1.0 - target):
      raise ValueError(
        f'{name}.band must be in [0, min(target, 1 - target)) = '
        f'[0, {min(target, 1.0 - target):g}), got {a.band}'
      )
    if not 0.0 <= decay < 1.0:
      raise ValueError(f'{name}.decay must be in [0, 1), got {a.decay}')
    if int(a.every) < 0:
      raise ValueError(f'{name}.every must be >= 0 (0: one cycle), got {a.every}')
    every = int(a.every) or int(rl.vmr.prefix_updates) + int(rl.vmr.suffix_updates)
    if int(rl.vmr.num_branches) < 2:
      raise ValueError(
        f'config.rl.vmr.num_branches must be >= 2 with config.rl.vmr.m='
        f"'adaptive' (the prefix share compares K branches), got {rl.vmr.num_branches}"
      )
    return cls(start, target, band, decay, every, lo, hi)


class Controller:
  """The adaptive split's state and rule (module docstring).

  State: ``m`` (the current split), ``ema`` (nan: empty), ``seen`` (updates
  observed) and ``in_flight`` (update -> the m its rollout was dispatched
  with, for rollouts not yet learned).
  """

  def __init__(self, settings: Settings):
    self.settings = settings
    self.m = settings.start
    self.ema = math.nan
    self.seen = 0
    self.in_flight: dict[int, int] = {}

  def split_for(self, update: int) -> int:
    """The m of rollout ``update``: fixed at its first call (its dispatch)."""
    return self.in_flight.setdefault(update, self.m)

  def take(self, update: int) -> int:
    """The m update ``update`` trains with (its rollout's); forgets it."""
    return self.in_flight.pop(update, self.m)

  def observe(self, update: int, share: float, m_used: int) -> float:
    """Feeds update ``update``'s share (measured at split ``m_used``) and
    moves m at the end of each ``every`` updates; returns the EMA compared
    with the band (nan: none yet)."""
    s = self.settings
    self.seen = update + 1
    if math.isfinite(share) and m_used == self.m:
      self.ema = (
        share
        if math.isnan(self.ema)
        else s.decay * self.ema + (1.0 - s.decay) * float(share)
      )
    ema = self.ema
    if self.seen % s.every == 0 and math.isfinite(ema):
      step = -1 if ema > s.target + s.band else 1 if ema < s.target - s.band else 0
      m = min(max(self.m + step, s.lo), s.hi)
      if m != self.m:
        self.m, self.ema = m, math.nan
    return ema

  def record(self) -> dict:
    """The JSON-able state for a train checkpoint's run record, with the
    settings it was made under (`restore` refuses others)."""
    return {
      'rule': ADAPTIVE,
      'settings': dataclasses.asdict(self.settings),
      'm': int(self.m),
      'ema': None if math.isnan(self.ema) else float(self.ema),
      'seen': int(self.seen),
      'in_flight': sorted([int(u), int(m)] for u, m in self.in_flight.items()),
    }

  def restore(self, record: dict) -> None:
    """Inverse of `record`; refuses a saved m outside [min, max]."""
    s = self.settings
    saved = record.get('settings')
    if saved is not None and saved != dataclasses.asdict(s):
      changed = sorted(k for k in saved if saved[k] != dataclasses.asdict(s).get(k))
      raise ValueError(
        f'saved with other config.rl.vmr.adaptive settings ({", ".join(changed)}: '
        f'{[saved[k] for k in changed]} then, '
        f'{[dataclasses.asdict(s).get(k) for k in changed]} now): the saved '
        'EMA and m belong to those; use the same settings'
      )
    m = int(record['m'])
    in_flight = {int(u): int(v) for u, v in record['in_flight']}
    for v in (m, *in_flight.values()):
      if not s.lo <= v <= s.hi:
        raise ValueError(
          f'the saved adaptive split m={v} is outside config.rl.vmr.adaptive '
          f'[min, max] = [{s.lo}, {s.hi}]'
        )
    self.m = m
    self.ema = math.nan if record['ema'] is None else float(record['ema'])
    self.seen = int(record['seen'])
    self.in_flight = in_flight
