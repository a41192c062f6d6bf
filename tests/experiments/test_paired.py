"""Paired comparisons of ablation runs: statistic, bootstrap, verdicts, report."""

import json

import ml_collections
import numpy as np
import pytest

from varrl_jax.experiments import aggregate, claims, paired


def arrays(correct, words, similarity=None, digest='d', failed=None):
  correct, words = np.asarray(correct), np.asarray(words)
  sim = correct.astype(float) if similarity is None else np.asarray(similarity, float)
  failed = np.zeros(len(words), bool) if failed is None else np.asarray(failed, bool)
  return paired.EvalArrays(digest, correct, words, sim, failed)


def test_the_statistic_is_the_difference_of_pooled_ratios():
  # Two evaluations of other prompt sets (digests d0, d1): prompts are
  # resampled per seed.
  a = {
    0: arrays([1, 0, 2], [1, 1, 2], digest='d0'),
    1: arrays([0, 0], [1, 3], digest='d1'),
  }
  b = {
    0: arrays([1, 1, 2], [1, 1, 2], digest='d0'),
    1: arrays([1, 0], [1, 3], digest='d1'),
  }
  d = paired.compare(a, b, 'wa', resamples=200)
  # Pooled over both seeds: a 3/8, b 5/8; per seed 1/4 and 1/4.
  assert d.diff == pytest.approx(5 / 8 - 3 / 8)
  assert d.per_seed == pytest.approx((0.25, 0.25))
  assert d.seeds == 2 and d.lo <= d.diff <= d.hi
  # Identical runs: every resample gives 0.
  same = paired.compare(a, a, 'ned', resamples=100)
  assert (same.diff, same.lo, same.hi) == (0.0, 0.0, 0.0)


def test_failed_images_count_in_neither_run():
  a = {0: arrays([1, 0, 1, 0], [1, 1, 1, 1], failed=[0, 1, 0, 0])}
  b = {0: arrays([1, 1, 0, 1], [1, 1, 1, 1], failed=[0, 0, 0, 1])}
  d = paired.compare(a, b, resamples=50)
  # Images 0 and 2 remain: a 2/2, b 1/2.
  assert d.diff == pytest.approx(-0.5) and d.dropped == 2


def test_other_prompts_or_keys_refuse_to_pair():
  a = {0: arrays([1], [1], digest='x')}
  b = {0: arrays([1], [1], digest='y')}
  with pytest.raises(ValueError, match='K4 vs K2, seed 0: evaluated on other prompts'):
    paired.compare(a, b, labels=('K2', 'K4'))
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


def test_seeds_sharing_prompts_share_the_prompt_resample():
  """Every seed scores the same prompts, so a prompt's effect on the
  difference is common to all seeds. Resampling prompts per seed treats it
  as independent noise: its interval covers the truth far less often."""
  rng = np.random.default_rng(2)
  n, seeds, trials = 128, 12, 60
  hits = {True: 0, False: 0}
  ones = np.ones(n)
  for _ in range(trials):
    # Per prompt i and seed s, b - a = u_i + e_si (sd 1 each), true mean 0.
    u = rng.normal(size=n)
    blocks = [
      np.stack([np.zeros(n), ones, u + rng.normal(size=n), ones], 1)
      for _ in range(seeds)
    ]
    for shared in (True, False):
      _, lo, hi = paired.paired_interval(blocks, 300, shared_prompts=shared)
      hits[shared] += lo <= 0.0 <= hi
  # Measured 58/60 and 45/60 (seed 2).
  assert hits[True] / trials >= 0.88
  assert hits[False] / trials <= 0.8


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
  assert paired.verdict(one) == 'reproduced'
  assert two.per_seed[0] > 0 > two.per_seed[1]
  assert paired.verdict(two) == 'undecided'  # the seeds disagree
  assert two.hi - two.lo > 2 * (one.hi - one.lo)


def test_verdicts():
  iv = paired.Interval
  assert paired.verdict(iv(0.1, 0.02, 0.2, 1, 10, (0.1,))) == 'reproduced'
  assert paired.verdict(iv(-0.1, -0.2, -0.02, 1, 10, (-0.1,))) == 'contradicted'
  assert paired.verdict(iv(0.1, -0.01, 0.2, 1, 10, (0.1,))) == 'undecided'
  assert paired.verdict(iv(-0.1, -0.2, -0.02, 1, 10, (-0.1,)), sign=-1) == 'reproduced'
  # The interval excludes 0 but one seed went the other way: not decided.
  assert paired.verdict(iv(0.1, 0.01, 0.2, 2, 10, (0.2, -0.01))) == 'undecided'
  assert paired.verdict(None) == 'undecided'


def _eval_config(seed=3, engine='rapidocr', grid=32):
  return ml_collections.ConfigDict(
    {
      'eval': {'seed': seed, 'batch_size': 16, 'num_prompts': 2, 'grid_images': grid},
      'sampling': {'top_k': 2},
      'ocr': {'engine': engine},
    }
  )


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
  cfg = _eval_config(seed=3)
  ev = paired.read_eval(str(tmp_path), 'eval_after', cfg)
  assert ev.correct.tolist() == [1, 0] and ev.words.tolist() == [1, 2]
  assert ev.pooled('wa') == pytest.approx(1 / 3)
  assert ev.pooled('ned') == pytest.approx(1.75 / 3)
  assert ev.failed.tolist() == [False, True]
  assert paired.EvalArrays.from_json(ev.to_json()).failed.tolist() == [False, True]
  assert paired.EvalArrays.from_json(ev.to_json()).digest == ev.digest
  # Another sampling seed or OCR engine is another evaluation; the grid size
  # changes no score.
  for other_cfg in (_eval_config(seed=4), _eval_config(engine='easyocr')):
    other = paired.read_eval(str(tmp_path), 'eval_after', other_cfg)
    assert other.digest != ev.digest
  same = paired.read_eval(str(tmp_path), 'eval_after', _eval_config(grid=9))
  assert same.digest == ev.digest
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
  assert '| K1 | 1 × 200 | 0.3000 | 0.7500 | -0.4500 [' in md
  assert 'OCR engine: rapidocr' in md
  # A claim whose runs are missing reads 'not run'.
  only = claims.verdict_lines('table5', records[1:], resamples=50)
  assert any('not run' in line for line in only)


def test_table3a_default_and_adaptive_against_the_best_fixed_split():
  def rec(run, m, correct):
    r = _record(run, 0, correct, {'rl.vmr.m': m, 'seed': 0})
    r['study'], r['default_m'], r['image_side'] = 'table3a', 3, 160
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
  assert 'against the default split `m48`' in text
  assert (
    'even-indexed prompts (m48), compared on the odd-indexed ones: ΔWA +0.0000' in text
  )
  assert 'not distinguishable at this power' in text
  # 1/8 of 160 px is 20: m32 (0.20) is nearest of these; 1/2 is 80: m96 (0.60)
  # ties with m64 (0.40) and the later split wins.
  records.append(rec('m64', '4', [1] * 10 + [0] * 190))
  (claim,) = claims.claims_for('table3a', records)
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
