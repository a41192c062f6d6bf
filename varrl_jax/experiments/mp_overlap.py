"""MP x K diagnostics of finished runs: mask coverage and branch overlap per scale.

The paper's open question (K = 4 degrades, maybe a conflict with MP): the
more suffix branches a prefix has, the larger the union of their text boxes
that its MP mask is rasterized from, and the less the branches agree on
where the text is. Every prefix update logs, per scale s
(`varrl_jax.rl.masks.branch_mask_stats`): ``mp/scale{s}/coverage`` (share of
the scale's tokens the prefix mask marks), ``/branch_coverage`` (the same
for one branch's own mask), ``/overlap`` (Jaccard index of all K branch
masks) and ``/pair_overlap`` (mean Jaccard index of two branches). Suffix
and full updates log ``/coverage`` of their own masks.

  summarize(run_dir) -> {'coverage': [S], 'overlap': [S], ...}  # record['mp_stats']
  figure({'K2': [rec, ...], 'K4': [rec, ...]}, 'mp_overlap.png')
"""

from __future__ import annotations

import math
import os
import re
import warnings

import numpy as np

from varrl_jax import writers

PREFIX_KEYS = ('coverage', 'branch_coverage', 'overlap', 'pair_overlap')
_KEY = re.compile(r'^mp/scale(\d+)/(\w+)$')


def _mean_per_scale(records: list[dict], key: str, num_scales: int) -> list:
  """Mean over ``records`` of ``mp/scale{s}/{key}`` per scale; None where no
  record has a finite value (JSON has no NaN)."""
  out = []
  for s in range(num_scales):
    values = [
      float(r[f'mp/scale{s}/{key}'])
      for r in records
      if f'mp/scale{s}/{key}' in r and math.isfinite(float(r[f'mp/scale{s}/{key}']))
    ]
    out.append(float(np.mean(values)) if values else None)
  return out


def summarize(run_dir: str, grids=None) -> dict:
  """Per-scale means of a run's MP statistics over its updates.

  Reads ``run_dir/metrics.jsonl`` (the last write of a step wins). Returns
  {} for a run without MP statistics (MP off, or a reward without regions),
  otherwise a JSON-able dict of lists [S] (None where undefined):
  ``coverage``, ``branch_coverage``, ``overlap``, ``pair_overlap`` (means
  over the prefix updates), ``suffix_coverage`` (mean over the other
  updates), with ``prefix_updates``, ``other_updates``,
  ``branches_with_boxes`` (mean over prefix updates) and ``grids`` (the
  given ``grids``, ``config.scales``: a side or an (h, w) per scale, for the
  figure's labels).
  """
  path = os.path.join(run_dir, 'metrics.jsonl')
  by_step = writers.last_per_step(path, lambda r: any(k.startswith('mp/') for k in r))
  if not by_step:
    return {}
  records = [by_step[s] for s in sorted(by_step)]
  num_scales = 1 + max(
    int(m.group(1)) for r in records for k in r if (m := _KEY.match(k))
  )
  prefix = [r for r in records if float(r.get('phase/prefix', 0.0)) == 1.0]
  other = [r for r in records if float(r.get('phase/prefix', 0.0)) != 1.0]
  out = {key: _mean_per_scale(prefix, key, num_scales) for key in PREFIX_KEYS}
  out['suffix_coverage'] = _mean_per_scale(other, 'coverage', num_scales)
  shares = [
    float(r['mask/branches_with_boxes'])
    for r in prefix
    if 'mask/branches_with_boxes' in r
  ]
  out.update(
    prefix_updates=len(prefix),
    other_updates=len(other),
    branches_with_boxes=float(np.mean(shares)) if shares else None,
  )
  if grids is not None:
    if len(grids) != num_scales:
      raise ValueError(
        f'mp_overlap.summarize: {len(grids)} grids for {num_scales} scales in {path}'
      )
    # config.scales items are a side or an (h, w) pair.
    out['grids'] = [
      [int(g), int(g)] if np.isscalar(g) else [int(g[0]), int(g[1])] for g in grids
    ]
  return out


def _stats_of(record: dict, run: str) -> dict:
  """A record.json dict (its 'mp_stats') or a `summarize` dict itself."""
  stats = record.get('mp_stats', record)
  if not stats or 'coverage' not in stats:
    raise ValueError(f"mp_overlap.figure: a record of run {run!r} has no 'mp_stats'")
  return stats


def _mean_err(rows: list[list]) -> tuple[np.ndarray, np.ndarray | None]:
  """Mean over seeds per scale (None -> NaN) and the sample std if >= 2 seeds."""
  arr = np.array([[np.nan if v is None else v for v in row] for row in rows], float)
  with warnings.catch_warnings():  # a scale no seed defines stays NaN
    warnings.simplefilter('ignore', RuntimeWarning)
    mean = np.nanmean(arr, axis=0)
    err = np.nanstd(arr, axis=0, ddof=1) if len(rows) > 1 else None
  return mean, err


def figure(records_by_run: dict[str, list[dict]], path: str, grids=None) -> str:
  """Two panels, per scale, one line per run (mean over its seeds; error
  bars: the std over seeds when there are several): left, the prefix
  mask's coverage (solid) and one branch's (dotted); right, the overlap of
  all K branches (solid) and of two branches (dashed). x: the scale index,
  labelled ``h x w`` from ``grids`` or the records' 'grids'. Returns ``path``."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, (ax_cov, ax_ov) = plt.subplots(1, 2, figsize=(10, 3.8))
  num_scales = 0
  for i, (run, records) in enumerate(records_by_run.items()):
    if not records:
      raise ValueError(f'mp_overlap.figure: run {run!r} has no records')
    stats = [_stats_of(r, run) for r in records]
    grids = grids or stats[0].get('grids')
    color = f'C{i}'
    panels = (
      (ax_cov, 'coverage', '-', ''),
      (ax_cov, 'branch_coverage', ':', ' one branch'),
      (ax_ov, 'overlap', '-', ' all K'),
      (ax_ov, 'pair_overlap', '--', ' two branches'),
    )
    for ax, key, style, label in panels:
      mean, err = _mean_err([s[key] for s in stats])
      x = np.arange(len(mean))
      num_scales = max(num_scales, len(mean))
      ax.errorbar(
        x,
        mean,
        yerr=err,
        color=color,
        linestyle=style,
        marker='o',
        ms=3,
        capsize=2,
        label=f'{run}{label} (n={len(stats)})',
      )
  ax_cov.set_title('MP mask coverage (prefix updates)')
  ax_cov.set_ylabel("share of the scale's tokens marked")
  ax_ov.set_title('overlap of the K branch masks (Jaccard)')
  ax_ov.set_ylabel('|intersection| / |union|')
  if grids and len(grids) != num_scales:
    raise ValueError(f'mp_overlap.figure: {len(grids)} grids for {num_scales} scales')
  ticks = np.arange(num_scales)
  labels = [f'{h}x{w}' for h, w in grids] if grids else [str(s) for s in ticks]
  for ax in (ax_cov, ax_ov):
    ax.set_xticks(ticks, labels, rotation=45 if num_scales > 8 else 0, fontsize=8)
    ax.set_xlabel('scale (grid h x w)' if grids else 'scale index')
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def markdown(records_by_run: dict[str, list[dict]]) -> list[str]:
  """Markdown rows: per run, per scale, union coverage / pair overlap of the
  prefix masks (mean over seeds; '—' where undefined)."""
  runs = {n: [_stats_of(r, n) for r in rs] for n, rs in records_by_run.items() if rs}
  if not runs:
    return []
  num = max(len(s['coverage']) for rs in runs.values() for s in rs)
  lines = [
    '| run | ' + ' | '.join(f's{s}' for s in range(num)) + ' | branches with boxes |',
    '|---|' + '---|' * (num + 1),
  ]
  for name, stats in runs.items():
    cov, _ = _mean_err([s['coverage'] for s in stats])
    pair, _ = _mean_err([s['pair_overlap'] for s in stats])
    cells = [
      '—'
      if not np.isfinite(c)
      else f'{c:.2f} / {"—" if not np.isfinite(p) else f"{p:.2f}"}'
      for c, p in zip(cov, pair)
    ]
    share = [
      s['branches_with_boxes']
      for s in stats
      if s.get('branches_with_boxes') is not None
    ]
    lines.append(
      f'| {name} | ' + ' | '.join(cells) + f' | {np.mean(share):.2f} |'
      if share
      else f'| {name} | ' + ' | '.join(cells) + ' | — |'
    )
  return lines
