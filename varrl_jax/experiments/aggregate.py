"""Ablation records -> a markdown table and a reward-curve plot per study.

Reads every ``WORKDIR/STUDY/RUN/seedS/record.json`` that `ablate` wrote and,
per run name, reports mean ± std over seeds (sample std, ddof = 1; a single
seed shows the mean alone) of the held-out Word Accuracy and NED after RL,
and the gain over the same seed's numbers before RL.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re

import numpy as np

from varrl_jax.experiments import studies

# The paper's numbers for each run of each study: {study: {run: (WA, NED)}}.
# The repo does not record the ablation tables of arXiv 2601.02256 (only its
# main-table CVTG-2K numbers, NextFlow 1024^2: base 0.5536 / 0.7816, full
# method 0.7841 / 0.9081, which are not ablation rows), so every entry is
# 'n/a' until someone copies them from the paper.
PAPER: dict[str, dict[str, tuple[float, float]]] = {}


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


def markdown(study: str, rows: list[Row], records: list[dict]) -> str:
  """The study's table, ours beside the paper's (n/a where not recorded)."""
  paper = PAPER.get(study, {})
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
    ref = paper.get(row.name)
    p_wa, p_ned = (f'{ref[0]:.4f}', f'{ref[1]:.4f}') if ref else ('n/a', 'n/a')
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
  return '\n'.join(lines) + '\n'


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
  return md, png
