"""The paper's ablation studies as lists of runs: config overrides x seeds.

A study is a list of named variants, each a dict of config overrides
(dotted keys of `varrl_jax.config.base_config`) on top of the config the
sweep is given; a `Run` is one variant at one seed with the fixed update
budget. Studies (arXiv 2601.02256):

- ``table4a``: the components one by one: vanilla GRPO, +VMR, +VMR+PANW,
  +MP (``rl.mode`` = vanilla, vmr, vmr+panw, full).
- ``table3a``: the VMR split m at every middle scale of the config's
  schedule (strictly between the first and the last), full method. Runs
  are named by the paper's pixel naming (``m64`` = the prefix up to the
  scale whose longer grid side x downsampling is 64 px); run ``adaptive``
  chooses m online (``rl.vmr.m='adaptive'``, `varrl_jax.rl.adaptive_m`).
- ``table3b``: the PANW exponent alpha in {0, 0.3, 0.6, 0.8, 1.0, 1.2}.
- ``table5``: K in {1, 2, 4} suffix branches per prefix.
- ``table4b``: prefix:suffix alternation 3:1 against the paper's coarse
  300:100. The coarse schedule is scaled to the budget N:
  ``(round(300 c), round(100 c))`` with ``c = min(1, N / 400)`` (each at
  least 1): one prefix block then one suffix block for budgets up to 400
  updates, the paper's literal 300:100 beyond.

Every study except ``table4a`` runs the full method (``rl.mode='full'``),
so the ablated hyper-parameter is the only difference from the default.
"""

from __future__ import annotations

import copy
import dataclasses

from varrl_jax.models.schedule import ScaleSchedule

STUDIES = ('table4a', 'table3a', 'table3b', 'table5', 'table4b')
DEFAULT_SEEDS = {'table4a': 3, 'table3a': 2, 'table3b': 2, 'table5': 2, 'table4b': 2}
ALPHAS = (0.0, 0.3, 0.6, 0.8, 1.0, 1.2)
BRANCHES = (1, 2, 4)
COARSE = (300, 100)  # Table 4b's coarse prefix:suffix schedule

TITLES = {
  'table4a': 'Table 4a: components (vanilla GRPO, +VMR, +PANW, +MP)',
  'table3a': 'Table 3a: VMR split scale m',
  'table3b': 'Table 3b: PANW exponent alpha',
  'table5': 'Table 5: suffix branches K per prefix',
  'table4b': 'Table 4b: prefix:suffix alternation schedule',
}


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a study: a variant at one seed."""

  study: str
  name: str  # the variant, e.g. 'vmr+panw', 'm64', 'alpha0.6'
  seed: int
  overrides: dict  # dotted config key -> value; includes seed and rl.num_updates

  @property
  def path(self) -> str:
    """Run folder relative to the sweep's workdir."""
    return f'{self.study}/{self.name}/seed{self.seed}'

  def flags(self) -> list[str]:
    """The overrides as ``--config.KEY=VALUE`` flags of varrl_jax.train."""
    return [f'--config.{k}={v}' for k, v in self.overrides.items()]


def schedule_of(config) -> ScaleSchedule:
  return ScaleSchedule.create(
    config.scales, config.image_size, config.tokenizer.downsample
  )


def middle_scales(config) -> list[tuple[str, int]]:
  """(name, index) of every scale strictly between the first and the last.

  The name is the paper's 'mNNN' (pixel resolution reached after the scale);
  ``_sI`` is appended where another scale of the schedule reaches the same
  resolution (non-square grids), since 'mNNN' would then name the first.
  """
  schedule = schedule_of(config)
  res = [schedule.resolution(s) for s in range(schedule.num_scales)]
  return [
    (f'm{res[s]}' if res.count(res[s]) == 1 else f'm{res[s]}_s{s}', s)
    for s in range(1, schedule.num_scales - 1)
  ]


def coarse_schedule(budget_updates: int) -> tuple[int, int]:
  """Table 4b's 300:100 scaled to a budget of ``budget_updates`` (module doc)."""
  c = min(1.0, budget_updates / sum(COARSE))
  return max(1, round(COARSE[0] * c)), max(1, round(COARSE[1] * c))


def variants(study: str, config, budget_updates: int) -> list[tuple[str, dict]]:
  """(name, overrides) of every variant of ``study``, without seed and budget."""
  full = {'rl.mode': 'full'}
  if study == 'table4a':
    return [
      ('vanilla', {'rl.mode': 'vanilla'}),
      ('vmr', {'rl.mode': 'vmr'}),
      ('vmr+panw', {'rl.mode': 'vmr+panw'}),
      ('vmr+panw+mp', {'rl.mode': 'full'}),
    ]
  if study == 'table3a':
    middle = middle_scales(config)
    if not middle:
      raise ValueError(
        f'table3a needs a schedule with a middle scale; config.scales has '
        f'{len(config.scales)} scales'
      )
    # Every middle split, then the online rule (`rl.adaptive_m`), whose
    # settings are checked now rather than hours into the sweep.
    adaptive = {**full, 'rl.vmr.m': 'adaptive'}
    if config is not None:
      from varrl_jax.rl import adaptive_m

      adaptive_m.Settings.from_config(
        apply_overrides(config, adaptive), schedule_of(config)
      )
    return [(name, {**full, 'rl.vmr.m': str(s)}) for name, s in middle] + [
      ('adaptive', adaptive)
    ]
  if study == 'table3b':
    return [(f'alpha{a:g}', {**full, 'rl.panw.alpha': float(a)}) for a in ALPHAS]
  if study == 'table5':
    return [(f'K{k}', {**full, 'rl.vmr.num_branches': int(k)}) for k in BRANCHES]
  if study == 'table4b':
    p, s = coarse_schedule(budget_updates)
    return [
      ('fine', {**full, 'rl.vmr.prefix_updates': 3, 'rl.vmr.suffix_updates': 1}),
      ('coarse', {**full, 'rl.vmr.prefix_updates': p, 'rl.vmr.suffix_updates': s}),
    ]
  raise ValueError(f'unknown study {study!r}; one of {", ".join(STUDIES)}')


def plan(
  study: str,
  config,
  seeds: int | None = None,
  budget_updates: int | None = None,
  only: tuple[str, ...] = (),
) -> list[Run]:
  """Every run of ``study``: variants x seeds ``config.seed .. config.seed + seeds - 1``.

  ``budget_updates``: the fixed update count of every run (default
  ``config.rl.num_updates``); ``only``: keep these variant names.
  """
  if study not in STUDIES:
    raise ValueError(f'unknown study {study!r}; one of {", ".join(STUDIES)}')
  seeds = DEFAULT_SEEDS[study] if seeds is None else seeds
  budget = int(config.rl.num_updates if budget_updates is None else budget_updates)
  if seeds < 1 or budget < 1:
    raise ValueError(f'seeds and budget_updates must be >= 1, got {seeds}, {budget}')
  found = variants(study, config, budget)
  unknown = set(only) - {name for name, _ in found}
  if unknown:
    raise ValueError(
      f'{study} has no run {sorted(unknown)}; its runs: {[n for n, _ in found]}'
    )
  return [
    Run(
      study,
      name,
      int(config.seed) + i,
      {**overrides, 'seed': int(config.seed) + i, 'rl.num_updates': budget},
    )
    for name, overrides in found
    if not only or name in only
    for i in range(seeds)
  ]


def apply_overrides(config, overrides: dict):
  """A copy of ``config`` with the dotted-key ``overrides`` set (keys must exist)."""
  config = copy.deepcopy(config)
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      if part not in node or not hasattr(node[part], 'items'):
        raise KeyError(f'override {key!r}: the config has no section {part!r}')
      node = node[part]
    if leaf not in node:
      raise KeyError(f'override {key!r}: the config has no key {leaf!r}')
    setattr(node, leaf, value)
  return config
