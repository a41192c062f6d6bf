"""Paired comparisons of ablation runs on the same held-out prompts.

Every run of a sweep is evaluated on the same prompts with the same sampling
keys (``config.eval``: the prompt set, ``seed`` and ``batch_size`` fix the
key of every image), so two runs' images of prompt i differ only by their
training. A run's evaluation is kept per image (`EvalArrays`: words right,
target words, sum of 1 - NED over the words) in its ablation record.

The statistic comparing run b with run a is the difference of pooled
metrics over every prompt of every shared seed,

    dWA = sum c_b / sum n_b - sum c_a / sum n_a        (NED: sum s / sum n),

and its 95% interval is a percentile bootstrap that keeps the pairing:
draw seeds with replacement, then prompts with replacement within each drawn
seed, and take the same prompts of both runs (`paired_interval`). With one
seed the interval covers prompt sampling only; with several it also covers
seed-to-seed variation (runs at seed s of both variants share their RL
prompt order and keys, so they are paired too).

`verdict` turns an interval into a word: 'reproduced' when it excludes 0 on
the side a claim predicts, 'contradicted' when it excludes 0 on the other
side, 'undecided' otherwise (at this power: the interval's half-width says
how large an effect it could have seen).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

METRICS = ('wa', 'ned')
VERDICTS = ('reproduced', 'contradicted', 'undecided')


@dataclasses.dataclass(frozen=True)
class EvalArrays:
  """One evaluation, per image in prompt order: [N] arrays and a digest of
  what was evaluated (prompt keys, targets and the sampling seed/batch)."""

  digest: str
  correct: np.ndarray  # int [N] target words read right
  words: np.ndarray  # int [N] target words
  similarity: np.ndarray  # float [N] sum over the words of 1 - NED
  failed: int  # images whose OCR crashed or timed out (read as nothing)

  @property
  def n(self) -> int:
    return int(self.words.size)

  def pooled(self, metric: str) -> float:
    num = self.correct if metric == 'wa' else self.similarity
    return float(num.sum() / max(int(self.words.sum()), 1))

  def to_json(self) -> dict:
    return {
      'digest': self.digest,
      'correct': [int(x) for x in self.correct],
      'words': [int(x) for x in self.words],
      'similarity': [round(float(x), 5) for x in self.similarity],
      'failed': int(self.failed),
    }

  @classmethod
  def from_json(cls, obj: dict) -> EvalArrays:
    return cls(
      str(obj['digest']),
      np.asarray(obj['correct'], np.int64),
      np.asarray(obj['words'], np.int64),
      np.asarray(obj['similarity'], np.float64),
      int(obj.get('failed', 0)),
    )


def digest_of(records: list[dict], eval_config) -> str:
  """What makes two evaluations comparable image by image: the prompts (keys
  and targets, in order) and the seed and batch size that fix the keys."""
  items = [[r.get('key'), list(r.get('targets', ()))] for r in records]
  text = json.dumps(
    {
      'items': items,
      'seed': int(eval_config.seed),
      'batch': int(eval_config.batch_size),
    },
    sort_keys=True,
  )
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_eval(run_dir: str, name: str, eval_config) -> EvalArrays | None:
  """`EvalArrays` of ``RUN_DIR/NAME/records.jsonl`` (`eval.heldout`); None
  when the evaluation kept no per-image records (a non-OCR reward)."""
  path = os.path.join(run_dir, name, 'records.jsonl')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  if not records or 'n_correct' not in records[0]:
    return None
  for i, r in enumerate(records):
    if 'similarity' not in r:
      raise ValueError(f'{path}: line {i + 1} has no similarity (an older evaluator)')
  return EvalArrays(
    digest_of(records, eval_config),
    np.array([r['n_correct'] for r in records], np.int64),
    np.array([r['n_words'] for r in records], np.int64),
    np.array([r['similarity'] for r in records], np.float64),
    sum(bool(r.get('failed')) for r in records),
  )


@dataclasses.dataclass(frozen=True)
class Interval:
  """b - a and its 95% bootstrap interval, over ``seeds`` x ``prompts``."""

  diff: float
  lo: float
  hi: float
  seeds: int
  prompts: int

  def fmt(self) -> str:
    return f'{self.diff:+.4f} [{self.lo:+.4f}, {self.hi:+.4f}]'


def _block(a: EvalArrays, b: EvalArrays, metric: str) -> np.ndarray:
  """float [N, 4]: (num_a, den_a, num_b, den_b) per prompt."""
  if a.digest != b.digest:
    raise ValueError(
      'the two runs were evaluated on other prompts or keys '
      f'(digest {a.digest} vs {b.digest}); rerun with the same config.eval'
    )
  num_a = a.correct if metric == 'wa' else a.similarity
  num_b = b.correct if metric == 'wa' else b.similarity
  return np.stack([num_a, a.words, num_b, b.words], axis=1).astype(np.float64)


def paired_interval(
  blocks: list[np.ndarray], resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
  """(b - a, lo, hi) of pooled ratios from per-seed [N, 4] blocks of
  (num_a, den_a, num_b, den_b); a resample draws seeds with replacement, then
  prompts with replacement within each drawn seed."""
  if not blocks:
    raise ValueError('no paired evaluations to compare')

  def stat(tot):
    return tot[..., 2] / tot[..., 3] - tot[..., 0] / tot[..., 1]

  rng = np.random.default_rng(seed)
  draws = np.zeros((resamples, 4))
  for s in rng.integers(len(blocks), size=(resamples, len(blocks))).T:
    # One drawn seed per resample: its prompts resampled, sums added.
    for b_index in np.unique(s):
      rows = s == b_index
      block = blocks[b_index]
      idx = rng.integers(len(block), size=(int(rows.sum()), len(block)))
      draws[rows] += block[idx].sum(axis=1)
  total = np.sum([b.sum(0) for b in blocks], axis=0)
  lo, hi = np.percentile(stat(draws), [2.5, 97.5])
  return float(stat(total)), float(lo), float(hi)


def compare(
  runs_a: dict[int, EvalArrays],
  runs_b: dict[int, EvalArrays],
  metric: str = 'wa',
  resamples: int = 2000,
) -> Interval | None:
  """b - a over the seeds both have (``{seed: EvalArrays}``); None if none."""
  if metric not in METRICS:
    raise ValueError(f'metric must be one of {METRICS}, got {metric!r}')
  seeds = sorted(set(runs_a) & set(runs_b))
  if not seeds:
    return None
  blocks = [_block(runs_a[s], runs_b[s], metric) for s in seeds]
  diff, lo, hi = paired_interval(blocks, resamples)
  return Interval(diff, lo, hi, len(seeds), int(sum(len(b) for b in blocks)))


def verdict(interval: Interval | None, sign: int = 1) -> str:
  """'reproduced' if the interval excludes 0 on the side of ``sign`` (+1: the
  claim predicts b > a), 'contradicted' if on the other side, else
  'undecided'; 'undecided' without an interval."""
  if interval is None:
    return 'undecided'
  lo, hi = (interval.lo, interval.hi) if sign > 0 else (-interval.hi, -interval.lo)
  if lo > 0:
    return 'reproduced'
  if hi < 0:
    return 'contradicted'
  return 'undecided'
