"""Paired comparisons of ablation runs: statistic, bootstrap, verdicts, report."""

import json

import ml_collections
import numpy as np
import pytest

from varrl_jax.experiments import aggregate, claims, paired


def arrays(correct, words, similarity=None, digest='d'):
  correct, words = np.asarray(correct), np.asarray(words)
  sim = correct.astype(float) if similarity is None else np.asarray(similarity, float)
  return paired.EvalArrays(digest, correct, words, sim, 0)


def test_the_statistic_is_the_difference_of_pooled_ratios():
  a = {0: arrays([1, 0, 2], [1, 1, 2]), 1: arrays([0, 0], [1, 3])}
  b = {0: arrays([1, 1, 2], [1, 1, 2]), 1: arrays([1, 0], [1, 3])}
  d = paired.compare(a, b, 'wa', resamples=200)
  # Pooled over both seeds: a 3/8, b 5/8.
  assert d.diff == pytest.approx(5 / 8 - 3 / 8)
  assert (d.seeds, d.prompts) == (2, 5)
  assert d.lo <= d.diff <= d.hi
  # Identical runs: every resample gives 0.
  same = paired.compare(a, a, 'ned', resamples=100)
  assert (same.diff, same.lo, same.hi) == (0.0, 0.0, 0.0)


def test_other_prompts_or_keys_refuse_to_pair():
  a = {0: arrays([1], [1], digest='x')}
  b = {0: arrays([1], [1], digest='y')}
  with pytest.raises(ValueError, match='other prompts or keys'):
    paired.compare(a, b)
  assert paired.compare(a, {1: arrays([1], [1], digest='x')}) is None  # no shared seed


def test_interval_covers_the_true_difference_about_95_percent():
  rng = np.random.default_rng(0)
  n, hits, trials = 300, 0, 80
  for _ in range(trials):
    # Per prompt a shared difficulty (pairing) and a true gain of 0.1.
    p = rng.uniform(0.1, 0.8, n)
    a = (rng.uniform(size=n) < p).astype(int)
    b = (rng.uniform(size=n) < p + 0.1).astype(int)
    ones = np.ones(n, int)
    d = paired.compare({0: arrays(a, ones)}, {0: arrays(b, ones)}, resamples=400)
    hits += d.lo <= 0.1 <= d.hi
  assert 0.85 <= hits / trials <= 1.0


def test_seed_variation_widens_the_interval():
  rng = np.random.default_rng(1)
  n = 400
  ones = np.ones(n, int)
  base = (rng.uniform(size=n) < 0.5).astype(int)
  up = np.where(rng.uniform(size=n) < 0.3, 1, base)  # seed 0: b better
  down = np.where(rng.uniform(size=n) < 0.3, 0, base)  # seed 1: b worse
  one = paired.compare({0: arrays(base, ones)}, {0: arrays(up, ones)}, resamples=500)
  two = paired.compare(
    {0: arrays(base, ones), 1: arrays(base, ones)},
    {0: arrays(up, ones), 1: arrays(down, ones)},
    resamples=500,
  )
  assert one.lo > 0  # one seed: clearly better
  assert two.lo < 0 < two.hi  # the seeds disagree: undecided
  assert two.hi - two.lo > 2 * (one.hi - one.lo)


def test_verdicts():
  iv = paired.Interval
  assert paired.verdict(iv(0.1, 0.02, 0.2, 1, 10)) == 'reproduced'
  assert paired.verdict(iv(-0.1, -0.2, -0.02, 1, 10)) == 'contradicted'
  assert paired.verdict(iv(0.1, -0.01, 0.2, 1, 10)) == 'undecided'
  assert paired.verdict(iv(-0.1, -0.2, -0.02, 1, 10), sign=-1) == 'reproduced'
  assert paired.verdict(None) == 'undecided'


def test_read_eval_from_evaluator_records(tmp_path):
  out = tmp_path / 'eval_after'
  out.mkdir()
  recs = [
    {'key': 'k0', 'targets': ['AB'], 'n_words': 1, 'n_correct': 1, 'similarity': 1.0},
    {
      'key': 'k1',
      'targets': ['CD', 'EF'],
      'n_words': 2,
      'n_correct': 0,
      'similarity': 0.75,
      'failed': True,
    },
  ]
  (out / 'records.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in recs))
  cfg = ml_collections.ConfigDict({'seed': 3, 'batch_size': 16})
  ev = paired.read_eval(str(tmp_path), 'eval_after', cfg)
  assert ev.correct.tolist() == [1, 0] and ev.words.tolist() == [1, 2]
  assert ev.pooled('wa') == pytest.approx(1 / 3)
  assert ev.pooled('ned') == pytest.approx(1.75 / 3)
  assert ev.failed == 1
  assert paired.EvalArrays.from_json(ev.to_json()).digest == ev.digest
  # Another sampling seed is another evaluation.
  other = paired.read_eval(
    str(tmp_path),
    'eval_after',
    ml_collections.ConfigDict({'seed': 4, 'batch_size': 16}),
  )
  assert other.digest != ev.digest
  assert paired.read_eval(str(tmp_path), 'eval_before', cfg) is None


def _record(run, seed, correct, overrides=None):
  ones = [1] * len(correct)
  ev = arrays(correct, ones).to_json()
  return {
    'study': 'table5',
    'run': run,
    'seed': seed,
    'overrides': overrides or {'rl.vmr.num_branches': int(run[1:]), 'seed': seed},
    'budget_updates': 4,
    'word_accuracy_before': 0.0,
    'word_accuracy_after': float(np.mean(correct)),
    'ned_before': 0.0,
    'ned_after': float(np.mean(correct)),
    'wall_seconds': 60.0,
    'eval_after': ev,
    'ocr_engine': 'rapidocr',
  }


def test_report_gives_paired_rows_and_a_verdict_per_claim():
  n = 200
  k2 = [1] * 150 + [0] * 50
  k1 = [1] * 60 + [0] * 140  # far worse than K2
  k4 = [1] * 148 + [0] * 52  # about the same
  records = [
    _record('K1', 0, k1),
    _record('K2', 0, k2),
    _record('K4', 0, k4),
  ]
  assert len(k2) == n
  lines = claims.verdict_lines('table5', records, resamples=300)
  text = '\n'.join(lines)
  assert 'K = 2 beats K = 1' in text
  k1_row = next(line for line in lines if 'K = 1' in line)
  k4_row = next(line for line in lines if 'K = 4' in line)
  assert k1_row.endswith('**reproduced** |') and '+0.4500' in k1_row
  assert k4_row.endswith('**undecided** |') and '+0.0100' in k4_row
  md = aggregate.markdown('table5', aggregate.aggregate(records), records)
  assert 'Paired against the default run `K2`' in md
  assert '| K1 | 1 × 200 | 0.3000 | -0.4500 [' in md
  assert 'OCR engine: rapidocr' in md
  # A claim whose runs are missing reads 'not run'.
  only = claims.verdict_lines('table5', records[1:], resamples=50)
  assert any('not run' in line for line in only)


def test_table3a_default_and_adaptive_against_the_best_fixed_split():
  def rec(run, m, correct):
    r = _record(run, 0, correct, {'rl.vmr.m': m, 'seed': 0})
    r['study'], r['default_m'] = 'table3a', 3
    return r

  records = [
    rec('m32', '2', [1] * 100 + [0] * 100),
    rec('m48', '3', [1] * 120 + [0] * 80),
    rec('m96', '5', [1] * 40 + [0] * 160),
    rec('adaptive', 'adaptive', [1] * 120 + [0] * 80),
  ]
  assert claims.default_run('table3a', records) == 'm48'
  lines = claims.paired_lines('table3a', records, resamples=200)
  text = '\n'.join(lines)
  assert 'best fixed split (m48' in text and 'ΔWA +0.0000' in text
  assert 'not distinguishable at this power' in text
  (claim,) = claims.claims_for('table3a', ['adaptive', 'm96', 'm32', 'm48'])
  assert (claim.better, claim.worse) == ('m32', 'm96')


def test_table5_report_tabulates_mp_coverage_and_overlap():
  records = [
    _record('K2', 0, [1, 0]),
    _record('K4', 0, [1, 1]),
    _record('K4', 1, [0, 1]),
  ]
  stats = {
    'coverage': [1.0, 0.5],
    'branch_coverage': [1.0, 0.25],
    'overlap': [1.0, 0.2],
    'pair_overlap': [1.0, 0.4],
    'branches_with_boxes': 0.75,
  }
  records[0]['mp_stats'] = stats
  records[1]['mp_stats'] = dict(stats, coverage=[1.0, 0.7], pair_overlap=[1.0, None])
  records[2]['mp_stats'] = dict(stats, coverage=[1.0, 0.9], pair_overlap=[1.0, 0.2])
  md = aggregate.markdown('table5', aggregate.aggregate(records), records)
  assert '| K2 | 1.00 / 1.00 | 0.50 / 0.40 | 0.75 |' in md
  # K4: coverage mean of 0.7 and 0.9; pair overlap only the defined 0.2.
  assert '| K4 | 1.00 / 1.00 | 0.80 / 0.20 | 0.75 |' in md
