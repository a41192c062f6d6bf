"""Paired comparisons of ablation runs on the same held-out prompts.

Every run of a sweep is evaluated on the same prompts with the same sampling
keys (``config.eval``: the prompt set, ``seed`` and ``batch_size`` fix the
key of every image), so two runs' images of prompt i differ only by their
training. A run's evaluation is kept per image (`EvalArrays`: words right,
target words, sum of 1 - NED over the words) in its ablation record.

The statistic comparing run b with run a is the difference of pooled
metrics over every prompt of every shared seed,

    dWA = sum c_b / sum n_b - sum c_a / sum n_a        (NED: sum s / sum n),

over the images both runs read (an image whose OCR failed in either run is
left out of both). Its 95% interval is a percentile bootstrap that keeps
the pairing (`paired_interval`): a resample draws seeds with replacement
and one resample of the prompts, the same for every drawn seed, because
every seed is scored on the same prompts and keys (a prompt's effect on
the difference is shared by all seeds; resampling prompts per seed would
count it as independent noise and narrow the interval). With one seed the
interval covers prompt sampling only; with several it also covers seed-to-
seed variation, but a percentile bootstrap over S seeds sees only (S - 1)
/ S of that variance: at S = 2 it is too narrow. So `verdict` also asks
every seed to agree: 'reproduced' when the interval excludes 0 on the side a
claim predicts and each seed's own difference lies on that side,
'contradicted' likewise on the other side, 'undecided' otherwise (at this
power: the interval's half-width says how large an effect it could have
seen). Several claims per table are judged without a multiple-comparison
correction.

With ``eval.images_per_prompt`` > 1 the rows are images, not prompts.
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
  failed: np.ndarray  # bool [N] OCR crashed or timed out (read as nothing)

  @property
  def n(self) -> int:
    return int(self.words.size)

  def numerator(self, metric: str) -> np.ndarray:
    """[N] per-image numerator of ``metric``: words right ('wa') or the
    sum of 1 - NED ('ned'); the denominator is `words`."""
    if metric not in METRICS:
      raise ValueError(f'metric must be one of {METRICS}, got {metric!r}')
    return self.correct if metric == 'wa' else self.similarity

  def pooled(self, metric: str) -> float:
    return float(self.numerator(metric).sum() / max(int(self.words.sum()), 1))

  def subset(self, index, tag: str) -> EvalArrays:
    """The images at ``index`` (a selector of [N]); ``tag`` marks the digest
    (subsets compare only with the same subset of another run)."""
    return EvalArrays(
      f'{self.digest}:{tag}',
      self.correct[index],
      self.words[index],
      self.similarity[index],
      self.failed[index],
    )

  def to_json(self) -> dict:
    return {
      'digest': self.digest,
      'correct': [int(x) for x in self.correct],
      'words': [int(x) for x in self.words],
      'similarity': [round(float(x), 5) for x in self.similarity],
      'failed': [int(i) for i in np.flatnonzero(self.failed)],  # image indices
    }

  @classmethod
  def from_json(cls, obj: dict) -> EvalArrays:
    words = np.asarray(obj['words'], np.int64)
    failed = np.zeros(words.shape, bool)
    failed[np.asarray(obj.get('failed', []), np.int64)] = True
    return cls(
      str(obj['digest']),
      np.asarray(obj['correct'], np.int64),
      words,
      np.asarray(obj['similarity'], np.float64),
      failed,
    )


def digest_of(records: list[dict], config) -> str:
  """What makes two evaluations comparable image by image: the prompts (keys
  and targets, in order), every ``config.eval`` setting but the grid size
  and ``before`` (the seed and batch size fix the sampling keys), the
  sampling settings and the OCR engine."""
  items = [[r.get('key'), list(r.get('targets', ()))] for r in records]
  settings = {
    k: v for k, v in config.eval.to_dict().items() if k not in ('grid_images', 'before')
  }
  text = json.dumps(
    {
      'items': items,
      'eval': settings,
      'sampling': config.sampling.to_dict(),
      'ocr_engine': str(config.ocr.engine),
    },
    sort_keys=True,
    default=str,
  )
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_eval(run_dir: str, name: str, config) -> EvalArrays | None:
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
    digest_of(records, config),
    np.array([r['n_correct'] for r in records], np.int64),
    np.array([r['n_words'] for r in records], np.int64),
    np.array([r['similarity'] for r in records], np.float64),
    np.array([bool(r.get('failed')) for r in records]),
  )


@dataclasses.dataclass(frozen=True)
class Interval:
  """b - a and its 95% bootstrap interval, over ``seeds`` x ``prompts``
  images; ``per_seed``: each shared seed's own b - a; ``dropped``: images
  left out because OCR failed on them in either run."""

  diff: float
  lo: float
  hi: float
  seeds: int
  prompts: int  # images per seed
  per_seed: tuple[float, ...] = ()
  dropped: int = 0

  def fmt(self) -> str:
    return f'{self.diff:+.4f} [{self.lo:+.4f}, {self.hi:+.4f}]'


def _block(a: EvalArrays, b: EvalArrays, metric: str, label: str) -> np.ndarray:
  """float [N, 4]: (num_a, den_a, num_b, den_b) per image; images whose OCR
  failed in either run count in neither (zero rows keep prompts aligned)."""
  if a.digest != b.digest or a.n != b.n:
    raise ValueError(
      f'{label}: evaluated on other prompts, keys or settings (digest {a.digest} '
      f'vs {b.digest}); rerun with the same config.eval, sampling and OCR engine'
    )
  block = np.stack(
    [a.numerator(metric), a.words, b.numerator(metric), b.words], axis=1
  ).astype(np.float64)
  block[a.failed | b.failed] = 0.0
  return block


def _ratio_diff(tot):
  with np.errstate(invalid='ignore', divide='ignore'):
    return tot[..., 2] / tot[..., 3] - tot[..., 0] / tot[..., 1]


def paired_interval(
  blocks: list[np.ndarray],
  resamples: int = 2000,
  seed: int = 0,
  shared_prompts: bool = True,
) -> tuple[float, float, float]:
  """(b - a, lo, hi) of pooled ratios from per-seed [N, 4] blocks of
  (num_a, den_a, num_b, den_b). A resample draws seeds with replacement and,
  with ``shared_prompts`` (every block scores the same N prompts, in order),
  one prompt resample applied to every drawn seed; otherwise prompts are
  resampled within each drawn seed independently."""
  if not blocks:
    raise ValueError('no paired evaluations to compare')
  rng = np.random.default_rng(seed)
  s = len(blocks)
  w_seed = rng.multinomial(s, np.full(s, 1.0 / s), size=resamples)  # [R, S]
  if shared_prompts:
    if len({len(b) for b in blocks}) != 1:
      raise ValueError('shared_prompts needs blocks of one length')
    stack = np.stack(blocks)  # [S, N, 4]
    n = stack.shape[1]
    w_prompt = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)  # [R, N]
    per_seed = np.einsum('rn,snc->rsc', w_prompt, stack)
  else:
    per_seed = np.stack(
      [
        np.einsum(
          'rn,nc->rc',
          rng.multinomial(len(b), np.full(len(b), 1.0 / len(b)), size=resamples),
          b,
        )
        for b in blocks
      ],
      axis=1,
    )  # [R, S, 4]
  draws = np.einsum('rs,rsc->rc', w_seed, per_seed)
  total = np.sum([b.sum(0) for b in blocks], axis=0)
  lo, hi = np.nanpercentile(_ratio_diff(draws), [2.5, 97.5])
  return float(_ratio_diff(total)), float(lo), float(hi)


def compare(
  runs_a: dict[int, EvalArrays],
  runs_b: dict[int, EvalArrays],
  metric: str = 'wa',
  resamples: int = 2000,
  labels: tuple[str, str] = ('a', 'b'),
) -> Interval | None:
  """b - a over the seeds both have (``{seed: EvalArrays}``); None if none.
  ``labels`` name the runs in errors."""
  if metric not in METRICS:
    raise ValueError(f'metric must be one of {METRICS}, got {metric!r}')
  seeds = sorted(set(runs_a) & set(runs_b))
  if not seeds:
    return None
  blocks = [
    _block(runs_a[s], runs_b[s], metric, f'{labels[1]} vs {labels[0]}, seed {s}')
    for s in seeds
  ]
  shared = len({runs_a[s].digest for s in seeds}) == 1
  diff, lo, hi = paired_interval(blocks, resamples, shared_prompts=shared)
  dropped = sum(int((runs_a[s].failed | runs_b[s].failed).sum()) for s in seeds)
  return Interval(
    diff,
    lo,
    hi,
    len(seeds),
    len(blocks[0]),
    tuple(float(_ratio_diff(b.sum(0))) for b in blocks),
    dropped,
  )


def verdict(interval: Interval | None, sign: int = 1) -> str:
  """'reproduced' if the interval excludes 0 on the side of ``sign`` (+1: the
  claim predicts b > a) and every seed's own difference lies on that side;
  'contradicted' likewise on the other side; else (or without an interval)
  'undecided'."""
  if interval is None:
    return 'undecided'
  lo, hi = (interval.lo, interval.hi) if sign > 0 else (-interval.hi, -interval.lo)
  seeds = [sign * d for d in interval.per_seed]
  if lo > 0 and all(d > 0 for d in seeds):
    return 'reproduced'
  if hi < 0 and all(d < 0 for d in seeds):
    return 'contradicted'
  return 'undecided'
