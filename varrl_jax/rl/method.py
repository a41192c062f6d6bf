"""Which method a run trains with, and the phase of each update.

`Method` resolves ``config.rl`` (mode, split m, alpha) against the model's
schedule once, before any weights load; `phase_of` gives the phase of an
update ('full', or 'prefix'/'suffix' in blocks of prefix_updates :
suffix_updates); `update_prompts` the prompts of an update (a function of
the config and the update index alone, so a resumed run sees the same).
"""

from __future__ import annotations

import dataclasses

from varrl_jax.data import prompt_sources
from varrl_jax.models.family import NextScaleModel
from varrl_jax.rl import adaptive_m, vmr

MODES = {
  'vanilla': (False, False, False),
  'vmr': (True, False, False),
  'vmr+panw': (True, True, False),
  'full': (True, True, True),
}


class NonFiniteError(FloatingPointError):
  """A NaN/inf loss or reward; the message says which and at which update."""


@dataclasses.dataclass(frozen=True)
class Method:
  """The resolved method: which components are on and their constants."""

  use_vmr: bool
  use_panw: bool
  use_mp: bool
  m: int  # with adaptive, the first m (`Trainer.split` moves it)
  alpha: float
  adaptive: bool = False  # config.rl.vmr.m='adaptive' (`rl.adaptive_m`)

  @classmethod
  def from_config(cls, config, model: NextScaleModel) -> Method:
    rl = config.rl
    if rl.mode not in MODES:
      raise ValueError(
        f'config.rl.mode must be one of {sorted(MODES)}, got {rl.mode!r}'
      )
    use_vmr, use_panw, use_mp = MODES[rl.mode]
    last = model.schedule.num_scales - 1
    adaptive = use_vmr and str(rl.vmr.m).strip().lower() == adaptive_m.ADAPTIVE
    if adaptive:  # checked here, before any weights load
      m = adaptive_m.Settings.from_config(config, model.schedule).start
    else:
      m = vmr.split_scale(model.schedule, rl.vmr.m) if use_vmr else last
    return cls(
      use_vmr and m < last,
      use_panw,
      use_mp,
      m,
      rl.panw.alpha if use_panw else 0.0,
      adaptive,
    )


def update_prompts(
  config, update: int, source=None
) -> list[tuple[str, tuple[str, ...]]]:
  """The (prompt, targets) of rollout batch ``update``: P =
  rl.prompts_per_update prompts of ``config.rl.prompts``
  (`data.prompt_sources`; ``source``: that source, already built), a function
  of (config, update) alone so a resumed run sees the same prompts."""
  source = prompt_sources.from_config(config) if source is None else source
  return source.batch(update, config.rl.prompts_per_update)


def phase_of(
  update: int, method: Method, prefix_updates: int, suffix_updates: int
) -> str:
  """'full', or 'prefix'/'suffix' in blocks of prefix_updates : suffix_updates."""
  if not method.use_vmr:
    return 'full'
  cycle = prefix_updates + suffix_updates
  return 'prefix' if update % cycle < prefix_updates else 'suffix'
