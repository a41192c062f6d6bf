"""The paper's claims per study, each judged by a paired interval of our runs.

A `Claim` says the paper finds run ``better`` ahead of run ``worse`` (names
of our runs of the study) on a metric; its verdict is `paired.verdict` of
better - worse over the seeds both have. A claim whose runs are not in the
sweep (or whose records hold no per-image evaluation) reads 'not run'.

`default_run` is the run each study's other runs are compared with in the
table: the full method as the config sets it, by name (vmr+panw+mp,
alpha0.6, K2, fine: the default config's alpha 0.6, K 2 and 3:1), and for
Table 3a the run at the base config's split (``default_m`` of the records).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from varrl_jax.experiments import paired


@dataclasses.dataclass(frozen=True)
class Claim:
  text: str  # the paper's claim, in its terms
  source: str  # where the paper says it
  better: str  # our run the paper's finding puts ahead
  worse: str
  metric: str = 'wa'


CLAIMS: dict[str, tuple[Claim, ...]] = {
  'table4a': (
    Claim('VMR beats vanilla GRPO', 'Figure 2 (curves)', 'vmr', 'vanilla'),
    Claim(
      'PANW helps on top of VMR', 'Mechanism 2 (no Table 4a value)', 'vmr+panw', 'vmr'
    ),
    Claim(
      'MP improves Word Accuracy (0.6855 -> 0.7071)',
      'Table 4a',
      'vmr+panw+mp',
      'vmr+panw',
    ),
    Claim(
      'MP improves NED (0.8601 -> 0.8699)', 'Table 4a', 'vmr+panw+mp', 'vmr+panw', 'ned'
    ),
    Claim(
      'the full method beats vanilla GRPO (0.5536 -> 0.7841)',
      'main result',
      'vmr+panw+mp',
      'vanilla',
    ),
  ),
  'table3b': (
    Claim('alpha 0.6 beats no PANW (alpha 0)', 'Table 3b', 'alpha0.6', 'alpha0'),
    Claim(
      'alpha 0.6 is the best Word Accuracy (0.7136)', 'Table 3b', 'alpha0.6', 'alpha0.8'
    ),
    Claim('alpha 0.6 beats alpha 1.0', 'Table 3b', 'alpha0.6', 'alpha1'),
  ),
  'table5': (
    Claim('K = 2 beats K = 1 (K = 1 under-explores)', 'Table 5', 'K2', 'K1'),
    Claim('K = 2 beats K = 4 (more variance, MP conflict)', 'Table 5', 'K2', 'K4'),
  ),
  'table4b': (
    Claim('3:1 alternation beats 300:100 (~0.8 points)', 'Table 4b', 'fine', 'coarse'),
  ),
}


def _fraction(record: dict) -> float | None:
  """The share of the image side a Table 3a run's prefix reaches (its
  'mNNN' over the record's ``image_side``)."""
  side = record.get('image_side')
  name = record['run']
  if not side or not name.startswith('m'):
    return None
  return int(name[1:].split('_')[0]) / side


def table3a_claims(records: list[dict]) -> tuple[Claim, ...]:
  """Table 3a: the paper's m128 of 1024² (1/8 of the side) is best and
  m512 (1/2) underperforms: our runs nearest 1/8 and 1/2 of the side (ties
  to the later split)."""
  fractions = {r['run']: f for r in records if (f := _fraction(r)) is not None}
  if len(fractions) < 2:
    return ()

  def nearest(target):
    return min(fractions, key=lambda n: (abs(fractions[n] - target), -fractions[n]))

  early, late = nearest(1 / 8), nearest(1 / 2)
  if early == late:
    return ()
  return (
    Claim(
      f'a split at 1/8 of the side (paper m128, best) beats one at 1/2 (m512): '
      f'{early} ({fractions[early]:.2f}) vs {late} ({fractions[late]:.2f})',
      'Table 3a',
      early,
      late,
    ),
  )


def claims_for(study: str, records: list[dict]) -> tuple[Claim, ...]:
  if study == 'table3a':
    return table3a_claims(records)
  return CLAIMS.get(study, ())


DEFAULT_RUNS = {
  'table4a': 'vmr+panw+mp',
  'table3b': 'alpha0.6',
  'table5': 'K2',
  'table4b': 'fine',
}


def default_run(study: str, records: list[dict]) -> str | None:
  """The name of the study's run at the config's own setting, if recorded."""
  names = {r['run'] for r in records}
  if study in DEFAULT_RUNS:
    return DEFAULT_RUNS[study] if DEFAULT_RUNS[study] in names else None
  if study == 'table3a':
    for r in records:
      if r.get('default_m') is not None and r['overrides'].get('rl.vmr.m') == str(
        r['default_m']
      ):
        return r['run']
  return None


def evals_by_run(records: list[dict], which: str = 'eval_after') -> dict:
  """{run name: {seed: EvalArrays}} of the records that hold ``which``."""
  out: dict[str, dict[int, paired.EvalArrays]] = {}
  for r in records:
    if r.get(which):
      out.setdefault(r['run'], {})[int(r['seed'])] = paired.EvalArrays.from_json(
        r[which]
      )
  return out


def _seeds_note(interval: paired.Interval) -> str:
  note = f'{interval.seeds} × {interval.prompts}'
  if interval.dropped:
    note += f' ({interval.dropped} OCR failures left out)'
  return note


def verdict_lines(study: str, records: list[dict], resamples: int = 2000) -> list[str]:
  """Markdown table rows: claim, where, interval, verdict."""
  evals = evals_by_run(records)
  claims = claims_for(study, records)
  if not claims:
    return []
  lines = [
    '| paper claim | where | ours: better − worse [95% CI] | seeds × prompts | verdict |',
    '|---|---|---|---|---|',
  ]
  for c in claims:
    a, b = evals.get(c.worse), evals.get(c.better)
    interval = None
    if a and b:
      try:
        interval = paired.compare(a, b, c.metric, resamples, (c.worse, c.better))
      except ValueError as e:
        lines.append(f'| {c.text} | {c.source} | not comparable: {e} | — | — |')
        continue
    if interval is None:
      lines.append(f'| {c.text} | {c.source} | — | — | not run |')
      continue
    label = 'WA' if c.metric == 'wa' else 'NED'
    lines.append(
      f'| {c.text} | {c.source} | {label} {c.better} − {c.worse}: {interval.fmt()} | '
      f'{_seeds_note(interval)} | **{paired.verdict(interval)}** |'
    )
  return lines


def _pooled(runs: dict[int, paired.EvalArrays], seeds=None) -> float:
  use = [runs[s] for s in (seeds if seeds is not None else runs)]
  right = sum(int(e.correct.sum()) for e in use)
  return right / max(sum(int(e.words.sum()) for e in use), 1)


def paired_lines(study: str, records: list[dict], resamples: int = 2000) -> list[str]:
  """Markdown: every run against the study's default run, paired (WA, NED);
  for Table 3a also adaptive m against the default and the best fixed split."""
  evals = evals_by_run(records)
  default = default_run(study, records)
  if default is None or default not in evals:
    return []
  base = evals[default]
  n = next(iter(base.values())).n
  lines = [
    f'Paired against the default run `{default}`: the same {n} held-out '
    'prompts and sampling keys for every run; Δ = run − default, pooled over the '
    'seeds both have, with a 95% bootstrap interval (seeds, and one prompt '
    'resample shared by the seeds); WA pooled over the same seeds.',
    '',
    '| run | seeds × prompts | WA | default WA | ΔWA [95% CI] | ΔNED [95% CI] |',
    '|---|---|---|---|---|---|',
  ]
  for name, runs in evals.items():
    if name == default:
      lines.append(
        f'| {name} | {len(runs)} × {n} | {_pooled(runs):.4f} | (default) | | |'
      )
      continue
    try:
      d_wa = paired.compare(base, runs, 'wa', resamples, (default, name))
      d_ned = paired.compare(base, runs, 'ned', resamples, (default, name))
    except ValueError as e:
      lines.append(f'| {name} | not comparable: {e} | | | | |')
      continue
    if d_wa is None:
      lines.append(f'| {name} | no seed shared with the default | | | | |')
      continue
    seeds = sorted(set(base) & set(runs))
    lines.append(
      f'| {name} | {_seeds_note(d_wa)} | {_pooled(runs, seeds):.4f} | '
      f'{_pooled(base, seeds):.4f} | {d_wa.fmt()} | {d_ned.fmt()} |'
    )
  if study == 'table3a' and 'adaptive' in evals:
    lines += ['', *_adaptive_lines(evals, default, resamples)]
  return lines


def _adaptive_lines(evals: dict, default: str, resamples: int) -> list[str]:
  """Adaptive m against the pre-registered default split, and against the
  best fixed split chosen on the even-indexed prompts and compared on the
  odd ones (choosing and comparing on the same prompts favours the chosen)."""
  adaptive = evals['adaptive']
  out = []
  try:
    d = paired.compare(evals[default], adaptive, 'wa', resamples, (default, 'adaptive'))
  except ValueError as e:
    return [f'Adaptive m: not comparable ({e}).']
  if d is not None:
    out.append(
      f'Adaptive m against the default split `{default}` (chosen before the runs): '
      f'ΔWA {d.fmt()} over {_seeds_note(d)}: adaptive is '
      f'**{_better_word(paired.verdict(d))}**.'
    )
  fixed = {n: r for n, r in evals.items() if n.startswith('m')}
  if not fixed:
    return out

  def half(runs, parity):
    return {
      s: e.subset(np.arange(e.n) % 2 == parity, 'even' if parity == 0 else 'odd')
      for s, e in runs.items()
    }

  best = max(fixed, key=lambda n: _pooled(half(fixed[n], 0)))
  try:
    d = paired.compare(
      half(fixed[best], 1), half(adaptive, 1), 'wa', resamples, (best, 'adaptive')
    )
  except ValueError as e:
    return [*out, f'Adaptive m against the best fixed split: not comparable ({e}).']
  if d is not None:
    out.append(
      f'Against the best fixed split on the even-indexed prompts ({best}), '
      f'compared on the odd-indexed ones: ΔWA {d.fmt()} over {_seeds_note(d)}: '
      f'adaptive is **{_better_word(paired.verdict(d))}**.'
    )
  return out


def _better_word(v: str) -> str:
  return {
    'reproduced': 'better',
    'contradicted': 'worse',
    'undecided': 'not distinguishable at this power',
  }[v]
