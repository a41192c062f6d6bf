"""Ablation records -> a markdown table and a reward-curve plot per study.

Reads every ``WORKDIR/STUDY/RUN/seedS/record.json`` that `ablate` wrote and,
per run name, reports mean ± std over seeds (sample std, ddof = 1; a single
seed shows the mean alone) of the held-out Word Accuracy and NED after RL,
and the gain over the same seed's numbers before RL. Beside them go the
paper's numbers (`PAPER`): in a run's `paper` columns only where the paper
measured that same setting, and all of them, at the paper's own settings,
in a paper block under the table.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re

import numpy as np

from varrl_jax.experiments import claims, mp_overlap, studies

PAPER_SOURCE = (
  'arXiv 2601.02256 (NextFlow-7B, 1024²), as given by the paper summary '
  'shipped with the project brief (`../shared/paper/var-rl-done-right.summary.md`)'
)


@dataclasses.dataclass(frozen=True)
class PaperEntry:
  """Numbers the paper gives for one of its own settings (None: not given).

  ``run`` names our run of the study when that run is the same setting
  (same components or the same alpha); only then does the entry fill the
  run's `paper` columns. Settings that differ from ours (the paper's split
  m128 at 1024², its literal 300:100 schedule, its main-table results)
  keep ``run=None`` and appear only in the study's paper block.
  """

  setting: str  # the paper's setting, in its own terms
  source: str  # where in the paper, e.g. 'Table 3b'
  wa: float | None = None  # Word Accuracy (CVTG-2K)
  ned: float | None = None
  clipscore: float | None = None
  run: str | None = None


# Every number the paper summary gives per study, exactly as given.
PAPER: dict[str, tuple[PaperEntry, ...]] = {
  'table4a': (
    PaperEntry('without MP (VMR + PANW)', 'Table 4a', 0.6855, 0.8601, run='vmr+panw'),
    PaperEntry('with MP (full method)', 'Table 4a', 0.7071, 0.8699, run='vmr+panw+mp'),
    PaperEntry('vanilla GRPO baseline', 'main result (CVTG-2K)', 0.5536, 0.7816),
    PaperEntry('full method', 'main result (CVTG-2K)', 0.7841, 0.9081),
  ),
  'table3b': (
    PaperEntry('alpha = 0.6', 'Table 3b', wa=0.7136, run='alpha0.6'),
    PaperEntry('alpha = 0.8', 'Table 3b', clipscore=0.8172, run='alpha0.8'),
  ),
}

# What the paper summary states without a number, per study.
PAPER_NOTES: dict[str, tuple[str, ...]] = {
  'table4a': (
    'MP improves Word Accuracy and NED over VMR + PANW (Table 4a); the '
    'summary gives no values for the vanilla and +VMR rows of Table 4a.',
    'The main CVTG-2K results are not Table 4a rows (their full method reads '
    "0.7841, Table 4a's 0.7071), so they fill no run's columns. The summary "
    'calls 0.5536 / 0.7816 the vanilla GRPO baseline; DESIGN.md calls it the '
    'base model.',
    'Prefix-512/256/128 (VMR) training curves lie consistently above vanilla '
    'GRPO (Figure 2).',
  ),
  'table3a': (
    "No values given. m128 gives the best accuracy; m256 is the paper's "
    'choice (fewer VMR estimates than m128, compatible with the mask); later '
    "splits (512, 1024) underperform. The paper's m names a scale of its "
    '1024² schedule and ours a scale of a much smaller one, so no paper number '
    'is set against our runs; the verdict compares our splits nearest its '
    'm128 and m512 as fractions of the image side.',
  ),
  'table3b': (
    'Among the alphas tried, alpha = 0.6 gives the best Word Accuracy (0.7136) '
    'and alpha = 0.8 the best CLIPScore (0.8172); the range 0.6 to 0.8 works '
    "best. No NED and no other alpha's values are given.",
  ),
  'table5': (
    'No values given. K = 2 is best; K = 1 under-explores and K = 4 degrades '
    '(more variance from heterogeneous trajectories, possibly a conflict with '
    'MP; Section 4.4).',
  ),
  'table4b': (
    'No values given. The fine 3:1 alternation beats the coarse 300:100 by '
    "about 0.8 % Word Accuracy (the summary's wording). Our coarse run is "
    '300:100 scaled to the budget, so no paper number is set against it.',
  ),
}


def _num(x: float | None) -> str:
  return 'n/a' if x is None else f'{x:.4f}'


def paper_columns(study: str, run: str) -> tuple[str, str]:
  """(paper WA, paper NED) cells of our run: the paper's entry at the same setting."""
  for entry in PAPER.get(study, ()):
    if entry.run == run:
      return _num(entry.wa), _num(entry.ned)
  return 'n/a', 'n/a'


def paper_markdown(study: str) -> str:
  """The paper's numbers and statements for ``study``, at the paper's own settings."""
  entries, notes = PAPER.get(study, ()), PAPER_NOTES.get(study, ())
  lines = [f'Paper: {PAPER_SOURCE}.']
  if entries:
    lines += [
      '',
      '| paper setting | where | WA | NED | CLIPScore | our run |',
      '|---|---|---|---|---|---|',
    ]
    for e in entries:
      lines.append(
        f'| {e.setting} | {e.source} | {_num(e.wa)} | {_num(e.ned)} | '
        f'{_num(e.clipscore)} | {e.run or "—"} |'
      )
  if notes:
    lines.append('')
    lines += [f'- {note}' for note in notes]
  if not entries and not notes:
    lines += ['', 'The paper summary gives nothing for this study.']
  return '\n'.join(lines) + '\n'


@dataclasses.dataclass(frozen=True)
class Stat:
  mean: float
  std: float  # sample std (ddof 1); nan for one value
  n: int

  @classmethod
  def of(cls, values) -> Stat:
    x = np.asarray([float(v) for v in values], np.float64)
    if x.size == 0:
      return cls(math.nan, math.nan, 0)
    std = float(x.std(ddof=1)) if x.size > 1 else math.nan
    return cls(float(x.mean()), std, int(x.size))

  def fmt(self, signed: bool = False) -> str:
    if self.n == 0:
      return '—'
    mean = f'{self.mean:+.4f}' if signed else f'{self.mean:.4f}'
    return mean if self.n == 1 else f'{mean} ± {self.std:.4f}'


@dataclasses.dataclass(frozen=True)
class Row:
  """One run name of a study, over its seeds."""

  name: str
  setting: str  # the study's overrides, without seed and budget
  seeds: tuple[int, ...]
  wa: Stat  # Word Accuracy after RL
  ned: Stat  # NED after RL
  d_wa: Stat  # after - before, per seed
  d_ned: Stat
  minutes: Stat  # wall time of a run


_SEED_DIR = re.compile(r'seed\d+')


def unread_images(record: dict) -> int:
  """Evaluation images of a run whose OCR crashed or timed out (before + after)."""
  return record.get('ocr_failed_before', 0) + record.get('ocr_failed_after', 0)


def record_paths(workdir: str, study: str = '*') -> list[str]:
  """``WORKDIR/STUDY/RUN/seedS/record.json`` paths (any study: '*'), sorted.

  Only folders named ``seed`` + digits count: a run folder moved aside
  (``seed0.bad``) is not a record of the study.
  """
  paths = glob.glob(os.path.join(workdir, study, '*', 'seed*', 'record.json'))
  keep = [p for p in paths if _SEED_DIR.fullmatch(os.path.basename(os.path.dirname(p)))]
  return sorted(keep)


def load_records(workdir: str, study: str) -> list[dict]:
  """Every record.json of ``study`` under ``workdir``, in path order."""
  out = []
  for path in record_paths(workdir, study):
    with open(path) as f:
      out.append(json.load(f))
  return out


def _setting(overrides: dict) -> str:
  keep = {k: v for k, v in overrides.items() if k not in ('seed', 'rl.num_updates')}
  return ', '.join(f'{k}={v}' for k, v in keep.items())


def aggregate(records: list[dict], order: tuple[str, ...] = ()) -> list[Row]:
  """Rows per run name: the names of ``order`` first (if recorded), then the rest."""
  by_name: dict[str, list[dict]] = {}
  for r in records:
    by_name.setdefault(r['run'], []).append(r)
  names = [n for n in order if n in by_name] + sorted(set(by_name) - set(order))
  rows = []
  for name in names:
    rs = sorted(by_name[name], key=lambda r: r['seed'])
    rows.append(
      Row(
        name=name,
        setting=_setting(rs[0]['overrides']),
        seeds=tuple(r['seed'] for r in rs),
        wa=Stat.of(r['word_accuracy_after'] for r in rs),
        ned=Stat.of(r['ned_after'] for r in rs),
        d_wa=Stat.of(r['word_accuracy_after'] - r['word_accuracy_before'] for r in rs),
        d_ned=Stat.of(r['ned_after'] - r['ned_before'] for r in rs),
        minutes=Stat.of(r['wall_seconds'] / 60 for r in rs),
      )
    )
  return rows


def _records_with_mp_stats(records: list[dict]) -> dict[str, list[dict]]:
  """{run name: its records that hold MP x K statistics}, names sorted."""
  by_run: dict[str, list[dict]] = {}
  for r in records:
    if r.get('mp_stats'):
      by_run.setdefault(r['run'], []).append(r)
  return dict(sorted(by_run.items()))


def markdown(study: str, rows: list[Row], records: list[dict]) -> str:
  """The study's table, ours beside the paper's (n/a where not given)."""
  budgets = sorted({r['budget_updates'] for r in records})
  lines = [
    f'## {studies.TITLES.get(study, study)}',
    '',
    f'Budget: {", ".join(map(str, budgets)) or "—"} updates per run. '
    'Held-out Word Accuracy (WA) and NED after RL, mean ± std over seeds; '
    'Δ = after − before, same seed.',
    '',
    '| run | setting | seeds | WA | NED | ΔWA | ΔNED | min/run | paper WA | paper NED |',
    '|---|---|---|---|---|---|---|---|---|---|',
  ]
  for row in rows:
    p_wa, p_ned = paper_columns(study, row.name)
    lines.append(
      f'| {row.name} | {row.setting} | {len(row.seeds)} | {row.wa.fmt()} | '
      f'{row.ned.fmt()} | {row.d_wa.fmt(True)} | {row.d_ned.fmt(True)} | '
      f'{row.minutes.mean:.1f} | {p_wa} | {p_ned} |'
    )
  if len(budgets) > 1:
    lines += ['', f'**Warning:** runs with different budgets {budgets} are mixed.']
  copies: dict[tuple[str, str], list[int]] = {}
  for r in records:
    if r.get('same_config_as'):
      source = r['same_config_as'].rsplit('/seed', 1)[0]
      copies.setdefault((r['run'], source), []).append(int(r['seed']))
  for (name, source), seeds in sorted(copies.items()):
    lines += [
      '',
      f'{name} (seeds {", ".join(map(str, sorted(seeds)))}) is the same config and '
      f'seed as {source}: its records, not trained again (`same_config_as`).',
    ]
  unread = [
    f'{r["run"]}/seed{r["seed"]} ({r.get("ocr_failed_before", 0)} before, '
    f'{r.get("ocr_failed_after", 0)} after)'
    for r in records
    if unread_images(r)
  ]
  if unread:
    lines += [
      '',
      '**Warning:** OCR failed (crash or timeout) on evaluation images of '
      f'{", ".join(unread)}; a failed image counts as unread, so those Word '
      'Accuracy and NED figures are low. Move the run folders aside and rerun them.',
    ]
  bases = {r.get('base_config_fingerprint') for r in records} - {None}
  if len(bases) > 1:
    lines += [
      '',
      f'**Warning:** runs from {len(bases)} different base configs are mixed.',
    ]
  judged = claims.paired_lines(study, records)
  if judged:
    lines += ['', *judged]
  verdicts = claims.verdict_lines(study, records)
  if verdicts:
    engines = sorted({str(r.get('ocr_engine', 'unrecorded')) for r in records})
    lines += [
      '',
      f'Verdicts (OCR engine: {", ".join(engines)}; reproduced / contradicted: the '
      "interval excludes 0 on / against the paper's side; undecided: it does not):",
      '',
      *verdicts,
    ]
  with_mp = _records_with_mp_stats(records)
  if study == 'table5' and with_mp:
    lines += [
      '',
      "MP × K (`table5_mp_overlap.png`): per scale, the prefix mask's coverage "
      "/ the mean Jaccard overlap of two branches' masks, over the prefix updates "
      '(mean over seeds):',
      '',
      *mp_overlap.markdown(with_mp),
    ]
  return '\n'.join(lines) + '\n\n' + paper_markdown(study)


def mean_curves(records: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Per run name: (steps, mean reward/mean over the seeds that reached each step)."""
  per_name: dict[str, dict[int, list[float]]] = {}
  for r in records:
    steps = per_name.setdefault(r['run'], {})
    for step, value in r.get('reward_curve', []):
      steps.setdefault(int(step), []).append(float(value))
  out = {}
  for name, steps in per_name.items():
    xs = np.array(sorted(steps), np.int64)
    out[name] = (xs, np.array([np.mean(steps[x]) for x in xs.tolist()]))
  return out


def plot_rewards(study: str, records: list[dict], path: str, order=()) -> str:
  """Mean reward curve per run name (matplotlib, Agg backend) to ``path``."""
  import matplotlib

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  curves = mean_curves(records)
  names = [n for n in order if n in curves] + sorted(set(curves) - set(order))
  fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
  for name in names:
    xs, ys = curves[name]
    ax.plot(xs, ys, marker='.' if len(xs) < 30 else None, label=name)
  ax.set_xlabel('update')
  ax.set_ylabel('reward/mean (mean over seeds)')
  ax.set_title(studies.TITLES.get(study, study))
  if names:
    ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def write_report(workdir: str, study: str, order=()) -> tuple[str, str] | None:
  """``WORKDIR/STUDY.md`` and ``WORKDIR/STUDY_reward.png``; None without records."""
  records = load_records(workdir, study)
  if not records:
    return None
  md = os.path.join(workdir, f'{study}.md')
  with open(md, 'w') as f:
    f.write(markdown(study, aggregate(records, tuple(order)), records))
  png = plot_rewards(
    study, records, os.path.join(workdir, f'{study}_reward.png'), order
  )
  # MP x K (and any study with MP stats): per-scale coverage and overlap.
  by_run = _records_with_mp_stats(records)
  if by_run and study == 'table5':
    mp_overlap.figure(by_run, os.path.join(workdir, f'{study}_mp_overlap.png'))
  return md, png
