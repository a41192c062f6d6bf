r"""Do two OCR engines score the same images alike? The check that allows
sweeps with the light engine.

  python -m varrl_jax.evaluate --config=configs/small.py --checkpoint=CKPT \
      --config.eval.num_prompts=512 --config.ocr.engine=easyocr --workdir=W/easyocr
  python -m varrl_jax.evaluate --config=configs/small.py --checkpoint=CKPT \
      --config.eval.num_prompts=512 --config.ocr.engine=rapidocr --workdir=W/rapidocr
  python -m varrl_jax.experiments.ocr_agreement W/easyocr W/rapidocr \
      --out=docs/ablations/ocr_agreement.json

The two evaluations sample the same images (same prompts, keys and
weights: `evaluate` is deterministic), so they differ only by the engine.
Given four folders (run 1 and run 2 read by engine 1, then by engine 2) it
prints instead each engine's paired difference run 2 - run 1: whether an
ablation's verdict depends on the engine.
Printed: each engine's Word Accuracy and NED, the paired difference b - a
with a 95% bootstrap interval over images (`paired.paired_interval`), the
share of images whose count of words read right is the same, and Cohen's
kappa of "all words right" per image. ``--out`` keeps it as JSON.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from varrl_jax import fs
from varrl_jax.experiments import paired


def read_samples(folder: str) -> tuple[list[dict], dict]:
  """(per-image records, metrics.json) of a `varrl_jax.evaluate` workdir."""
  with open(os.path.join(folder, 'samples.jsonl')) as f:
    records = [json.loads(line) for line in f if line.strip()]
  with open(os.path.join(folder, 'metrics.json')) as f:
    meta = json.load(f)
  return records, meta


def kappa(a: np.ndarray, b: np.ndarray) -> float:
  """Cohen's kappa of two boolean ratings of the same items."""
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  observed = float(np.mean(a == b))
  pa, pb = a.mean(), b.mean()
  chance = float(pa * pb + (1 - pa) * (1 - pb))
  return 1.0 if chance == 1.0 else (observed - chance) / (1.0 - chance)


def agreement(a: list[dict], b: list[dict], resamples: int = 2000) -> dict:
  """Agreement figures of two engines' records of the same images."""
  keys_a, keys_b = [r['key'] for r in a], [r['key'] for r in b]
  if keys_a != keys_b:
    raise ValueError('the two evaluations scored other prompts (keys differ)')
  words = np.array([r['n_words'] for r in a])
  if words.tolist() != [r['n_words'] for r in b]:
    raise ValueError('the two evaluations count other target words per image')
  if not words.sum():
    raise ValueError('the evaluations hold no target words')
  c_a = np.array([r['n_correct'] for r in a])
  c_b = np.array([r['n_correct'] for r in b])
  out = {
    'images': len(a),
    'words': int(words.sum()),
    'failed_a': sum(bool(r.get('failed')) for r in a),
    'failed_b': sum(bool(r.get('failed')) for r in b),
  }
  for name, c in (('a', c_a), ('b', c_b)):
    out[f'word_accuracy_{name}'] = float(c.sum() / words.sum())
  if all('similarity' in r for r in a + b):
    s_a = np.array([r['similarity'] for r in a])
    s_b = np.array([r['similarity'] for r in b])
    out['ned_a'], out['ned_b'] = (
      float(s_a.sum() / words.sum()),
      float(s_b.sum() / words.sum()),
    )
  block = np.stack([c_a, words, c_b, words], 1).astype(np.float64)
  diff, lo, hi = paired.paired_interval([block], resamples)
  out['wa_b_minus_a'] = [diff, lo, hi]
  out['same_count_share'] = float(np.mean(c_a == c_b))
  out['all_right_kappa'] = kappa(c_a == words, c_b == words)
  return out


def run_difference(a: list[dict], b: list[dict], resamples: int = 2000) -> list[float]:
  """[b - a, lo, hi] of pooled Word Accuracy of two runs' records of the
  same prompts (one engine), paired over images."""
  if [r['key'] for r in a] != [r['key'] for r in b]:
    raise ValueError('the two runs were scored on other prompts (keys differ)')
  block = np.array(
    [
      [ra['n_correct'], ra['n_words'], rb['n_correct'], rb['n_words']]
      for ra, rb in zip(a, b)
    ],
    np.float64,
  )
  return list(paired.paired_interval([block], resamples))


def difference_agreement(folders: list[str]) -> dict:
  """Run 1 and run 2 read by engine E1 and by engine E2 (folders R1E1, R2E1,
  R1E2, R2E2): does the run difference an ablation reports depend on the
  engine? Each engine's difference with its interval, and their gap."""
  (r1e1, _), (r2e1, _), (r1e2, _), (r2e2, _) = (read_samples(f) for f in folders)
  d1, d2 = run_difference(r1e1, r2e1), run_difference(r1e2, r2e2)
  return {'runs_engine1': d1, 'runs_engine2': d2, 'gap': d2[0] - d1[0]}


def main(argv: list[str]) -> int:
  args = [a for a in argv if not a.startswith('--')]
  flags = [a for a in argv if a.startswith('--')]
  bad = [f for f in flags if not f.startswith('--out=') or f == '--out=']
  if len(args) not in (2, 4) or bad:
    why = (
      f'unknown flag {bad[0]}' if bad else f'{len(args)} folders given, 2 or 4 needed'
    )
    print(
      f'error: {why}; usage: python -m varrl_jax.experiments.ocr_agreement '
      'DIR_A DIR_B [--out=FILE] (two engines, the same images), or '
      'R1E1 R2E1 R1E2 R2E2 [--out=FILE] (two runs read by two engines)',
      file=sys.stderr,
    )
    return 2
  opts = dict(f[2:].split('=', 1) for f in flags)
  if len(args) == 4:
    try:
      out = difference_agreement(args)
    except (OSError, ValueError, KeyError) as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
    out['folders'] = args
    for name in ('runs_engine1', 'runs_engine2'):
      d, lo, hi = out[name]
      print(f'{name}: run 2 - run 1 WA {d:+.4f} [{lo:+.4f}, {hi:+.4f}]')
    print(f'engine gap of the difference {out["gap"]:+.4f}')
    if 'out' in opts:
      fs.write_text(opts['out'], json.dumps(out, indent=2))
    return 0
  try:
    (a, meta_a), (b, meta_b) = read_samples(args[0]), read_samples(args[1])
    if meta_a.get('weights') != meta_b.get('weights') or meta_a.get(
      'seed'
    ) != meta_b.get('seed'):
      raise ValueError(
        f'{args[0]} and {args[1]} evaluated other weights or seeds: '
        f'{meta_a.get("weights")} / {meta_b.get("weights")}'
      )
    out = agreement(a, b)
  except (OSError, ValueError, KeyError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  out.update(a=args[0], b=args[1], weights=meta_a.get('weights'))
  d, lo, hi = out['wa_b_minus_a']
  print(
    f'{out["images"]} images, {out["words"]} words: WA a {out["word_accuracy_a"]:.4f}, '
    f'b {out["word_accuracy_b"]:.4f}; b - a {d:+.4f} [{lo:+.4f}, {hi:+.4f}]; same count '
    f'{out["same_count_share"]:.3f}; all-right kappa {out["all_right_kappa"]:.3f}'
  )
  if 'out' in opts:
    fs.write_text(opts['out'], json.dumps(out, indent=2))
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
