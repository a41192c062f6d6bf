"""The paper's claims per study, each judged by a paired interval of our runs.

A `Claim` says the paper finds run ``better`` ahead of run ``worse`` (names
of our runs of the study) on a metric; its verdict is `paired.verdict` of
better - worse over the seeds both have. A claim whose runs are not in the
sweep (or whose records hold no per-image evaluation) reads 'not run'.

`default_run` is the run each study's other runs are compared with in the
table: the config's own setting (the full method at its m, alpha 0.6, K 2,
3:1), found from the records' overrides.
"""

from __future__ import annotations

import dataclasses

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


def table3a_claims(names: list[str]) -> tuple[Claim, ...]:
  """Table 3a: an early split (the paper's m128 of 1024², 1/8 of the side)
  beats a late one (m512, 1/2): our earliest split run against our latest."""
  if len(names) < 2:
    return ()
  return (
    Claim(
      f'an early split beats a late one (m128 best, m512 worse): {names[0]} vs '
      f'{names[-1]}',
      'Table 3a',
      names[0],
      names[-1],
    ),
  )


def claims_for(study: str, run_names: list[str]) -> tuple[Claim, ...]:
  if study == 'table3a':
    return table3a_claims(
      sorted(
        (n for n in run_names if n.startswith('m')),
        key=lambda n: int(n[1:].split('_')[0]),
      )
    )
  return CLAIMS.get(study, ())


def default_run(
  study: str, records: list[dict], config_m: str | None = None
) -> str | None:
  """The name of the study's run at the config's own setting, if recorded."""
  names = {r['run'] for r in records}
  fixed = {
    'table4a': 'vmr+panw+mp',
    'table3b': 'alpha0.6',
    'table5': 'K2',
    'table4b': 'fine',
  }
  if study in fixed:
    return fixed[study] if fixed[study] in names else None
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


def verdict_lines(study: str, records: list[dict], resamples: int = 2000) -> list[str]:
  """Markdown table rows: claim, where, interval, verdict."""
  evals = evals_by_run(records)
  claims = claims_for(study, sorted({r['run'] for r in records}))
  if not claims:
    return []
  lines = [
    '| paper claim | where | ours: better − worse [95% CI] | seeds × prompts | verdict |',
    '|---|---|---|---|---|',
  ]
  for c in claims:
    a, b = evals.get(c.worse), evals.get(c.better)
    interval = paired.compare(a, b, c.metric, resamples) if a and b else None
    if interval is None:
      lines.append(f'| {c.text} | {c.source} | — | — | not run |')
      continue
    label = 'WA' if c.metric == 'wa' else 'NED'
    lines.append(
      f'| {c.text} | {c.source} | {label} {c.better} − {c.worse}: {interval.fmt()} | '
      f'{interval.seeds} × {interval.prompts // interval.seeds} | '
      f'**{paired.verdict(interval)}** |'
    )
  return lines


def paired_lines(study: str, records: list[dict], resamples: int = 2000) -> list[str]:
  """Markdown: every run against the study's default run, paired (WA, NED)."""
  evals = evals_by_run(records)
  default = default_run(study, records)
  if default is None or default not in evals:
    return []
  base = evals[default]
  first = next(iter(base.values()))
  lines = [
    f'Paired against the default run `{default}`: the same {first.n} held-out '
    'prompts and sampling keys for every run; Δ = run − default, pooled over the '
    'seeds both have, with a 95% bootstrap interval (seeds, then prompts).',
    '',
    '| run | seeds × prompts | WA (pooled) | ΔWA [95% CI] | ΔNED [95% CI] |',
    '|---|---|---|---|---|',
  ]
  for name, runs in evals.items():
    wa = sum(int(e.correct.sum()) for e in runs.values()) / max(
      sum(int(e.words.sum()) for e in runs.values()), 1
    )
    if name == default:
      lines.append(f'| {name} | {len(runs)} × {first.n} | {wa:.4f} | (default) | |')
      continue
    d_wa = paired.compare(base, runs, 'wa', resamples)
    d_ned = paired.compare(base, runs, 'ned', resamples)
    if d_wa is None:
      lines.append(f'| {name} | no seed shared with the default | {wa:.4f} | — | — |')
      continue
    lines.append(
      f'| {name} | {d_wa.seeds} × {d_wa.prompts // d_wa.seeds} | {wa:.4f} | '
      f'{d_wa.fmt()} | {d_ned.fmt()} |'
    )
  fixed = {n: r for n, r in evals.items() if n.startswith('m')}
  if 'adaptive' in evals and fixed:

    def pooled(runs):
      return sum(int(e.correct.sum()) for e in runs.values()) / max(
        sum(int(e.words.sum()) for e in runs.values()), 1
      )

    best = max(fixed, key=lambda n: pooled(fixed[n]))
    d = paired.compare(fixed[best], evals['adaptive'], 'wa', resamples)
    if d is not None:
      lines += [
        '',
        f'Adaptive m against the best fixed split ({best}, by pooled WA): '
        f'ΔWA {d.fmt()} over {d.seeds} × {d.prompts // d.seeds}: '
        f'adaptive is **{_better_word(paired.verdict(d))}**.',
      ]
  return lines


def _better_word(v: str) -> str:
  return {
    'reproduced': 'better',
    'contradicted': 'worse',
    'undecided': 'not distinguishable at this power',
  }[v]
