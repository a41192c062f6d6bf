"""The ablation runner: study expansion, resumable sweeps, aggregation, one real run."""

import json
import math
import os
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from tests.conftest import toy_config
from varrl_jax.experiments import ablate, aggregate, studies
from varrl_jax.rewards.pool import OcrPool
from varrl_jax.rewards.types import OcrResult, OcrWord

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _names(runs):
  return list(dict.fromkeys(r.name for r in runs))


def test_table4a_is_the_four_modes_at_three_seeds():
  config = toy_config()
  config.seed = 5
  runs = studies.plan('table4a', config, budget_updates=7)
  assert _names(runs) == ['vanilla', 'vmr', 'vmr+panw', 'vmr+panw+mp']
  assert len(runs) == 12
  assert [r.overrides['rl.mode'] for r in runs[::3]] == [
    'vanilla',
    'vmr',
    'vmr+panw',
    'full',
  ]
  assert [r.seed for r in runs[:3]] == [5, 6, 7]
  for r in runs:
    assert r.overrides['seed'] == r.seed and r.overrides['rl.num_updates'] == 7
  assert runs[0].path == 'table4a/vanilla/seed5'
  assert '--config.rl.mode=vanilla' in runs[0].flags()


def test_table3b_sweeps_six_alphas_and_table5_three_ks():
  config = toy_config()
  runs = studies.plan('table3b', config)
  assert len(runs) == 6 * 2
  assert sorted({r.overrides['rl.panw.alpha'] for r in runs}) == [
    0.0,
    0.3,
    0.6,
    0.8,
    1.0,
    1.2,
  ]
  assert all(r.overrides['rl.mode'] == 'full' for r in runs)
  assert _names(runs)[:3] == ['alpha0', 'alpha0.3', 'alpha0.6']
  runs = studies.plan('table5', config, seeds=3)
  assert _names(runs) == ['K1', 'K2', 'K4'] and len(runs) == 9
  assert [r.overrides['rl.vmr.num_branches'] for r in runs[::3]] == [1, 2, 4]
  # Budget defaults to the config's rl.num_updates.
  assert runs[0].overrides['rl.num_updates'] == config.rl.num_updates


def test_table3a_middle_scales_come_from_the_schedule():
  config = toy_config()  # 3 scales at 8, 16, 32 px: one middle scale
  assert studies.middle_scales(config) == [('m16', 1)]
  config.image_size = (64, 64)
  config.scales = (1, 2, 4, 8, 12, 16)
  config.tokenizer.downsample = 4
  assert studies.middle_scales(config) == [
    ('m8', 1),
    ('m16', 2),
    ('m32', 3),
    ('m48', 4),
  ]
  runs = studies.plan('table3a', config, seeds=2)
  assert _names(runs) == ['m8', 'm16', 'm32', 'm48', 'adaptive']
  assert [r.overrides['rl.vmr.m'] for r in runs[::2]] == [
    '1',
    '2',
    '3',
    '4',
    'adaptive',
  ]
  # Same resolution twice (non-square grids): the index disambiguates.
  config.image_size = (16, 32)
  config.scales = ((1, 4), (2, 4), (2, 8), (4, 8))
  # 16, 16, 32, 32 px: 'm16' would name scale 0.
  assert studies.middle_scales(config) == [('m16_s1', 1), ('m32_s2', 2)]
  config.scales = ((2, 4), (4, 8))
  with pytest.raises(ValueError, match='middle scale'):
    studies.plan('table3a', config)


def test_table4b_coarse_schedule_is_scaled_to_the_budget():
  assert studies.coarse_schedule(20) == (15, 5)
  assert studies.coarse_schedule(400) == (300, 100)
  assert studies.coarse_schedule(4000) == (300, 100)
  assert studies.coarse_schedule(1) == (1, 1)
  runs = studies.plan('table4b', toy_config(), budget_updates=20)
  assert _names(runs) == ['fine', 'coarse'] and len(runs) == 4
  fine, coarse = runs[0].overrides, runs[2].overrides
  assert (fine['rl.vmr.prefix_updates'], fine['rl.vmr.suffix_updates']) == (3, 1)
  assert (coarse['rl.vmr.prefix_updates'], coarse['rl.vmr.suffix_updates']) == (15, 5)


def test_plan_rejects_unknown_study_and_run_names():
  with pytest.raises(ValueError, match='unknown study'):
    studies.plan('table9', toy_config())
  with pytest.raises(ValueError, match="has no run \\['K3'\\]"):
    studies.plan('table5', toy_config(), only=('K3',))
  assert _names(studies.plan('table5', toy_config(), only=('K4',))) == ['K4']


def test_apply_overrides_copies_and_checks_keys():
  config = toy_config()
  config.lock()
  out = studies.apply_overrides(config, {'rl.panw.alpha': 1.2, 'rl.vmr.m': '1'})
  assert (out.rl.panw.alpha, out.rl.vmr.m) == (1.2, '1')
  assert config.rl.panw.alpha == 0.6  # the original is untouched
  with pytest.raises(KeyError, match='alfa'):
    studies.apply_overrides(config, {'rl.panw.alfa': 1.0})
  with pytest.raises(KeyError, match='rll'):
    studies.apply_overrides(config, {'rll.mode': 'full'})
  # Every override of every study names a real key.
  for study in studies.STUDIES:
    for run in studies.plan(study, config, seeds=1):
      studies.apply_overrides(config, run.overrides)


class FakeTrain:
  """Writes a metrics.jsonl and returns before/after summaries; counts calls."""

  def __init__(self, crash=(), unread=()):
    self.calls = []
    self.crash = set(crash)
    self.unread = set(unread)  # runs whose final evaluation lost 2 images to OCR

  def __call__(self, config, workdir, pool=None):
    self.calls.append(workdir)
    if any(workdir.endswith(c) for c in self.crash):
      with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
        f.write(json.dumps({'step': 0, 'reward/mean': 0.1}) + '\n')
      raise RuntimeError('boom')
    offset = {'vanilla': 0.0, 'vmr': 0.1, 'vmr+panw': 0.2, 'full': 0.3}[config.rl.mode]
    with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
      for step in range(config.rl.num_updates):
        f.write(json.dumps({'step': step, 'reward/mean': offset + 0.01 * step}) + '\n')
    after = types.SimpleNamespace(
      word_accuracy=offset + 0.01 * config.seed,
      ned=0.5,
      n_failed=2 if any(workdir.endswith(c) for c in self.unread) else 0,
    )
    return {
      'before': {'word_accuracy': 0.05, 'ned': 0.4, 'n_failed': 0},
      'after': after,
    }


def test_sweep_writes_records_skips_them_and_reports_failures(tmp_path):
  config = toy_config()
  runs = studies.plan('table4a', config, seeds=2, budget_updates=3)
  fake = FakeTrain(crash=['vmr/seed1'])
  result = ablate.sweep(config, runs, str(tmp_path), train_fn=fake)
  assert len(fake.calls) == 8
  assert result.failed == [('table4a/vmr/seed1', 'RuntimeError: boom')]
  assert len(result.done) == 7 and not result.skipped
  assert not (tmp_path / 'table4a/vmr/seed1/record.json').exists()
  rec = json.loads((tmp_path / 'table4a/vmr+panw/seed1/record.json').read_text())
  assert rec['study'] == 'table4a' and rec['run'] == 'vmr+panw' and rec['seed'] == 1
  assert rec['overrides'] == {'rl.mode': 'vmr+panw', 'seed': 1, 'rl.num_updates': 3}
  assert rec['word_accuracy_after'] == pytest.approx(0.21)
  assert rec['ned_before'] == 0.4 and rec['updates'] == 3
  assert rec['reward_curve'] == [[0, 0.2], [1, pytest.approx(0.21)], [2, 0.22]]
  assert rec['wall_seconds'] >= 0 and 'varrl_jax.train' in rec['command']

  # Second sitting: only the failed run is tried again.
  fake2 = FakeTrain()
  result = ablate.sweep(config, runs, str(tmp_path), train_fn=fake2)
  assert [os.path.relpath(p, tmp_path) for p in fake2.calls] == ['table4a/vmr/seed1']
  assert len(result.skipped) == 7 and result.done == ['table4a/vmr/seed1']
  # Third: everything is done, nothing runs.
  fake3 = FakeTrain()
  result = ablate.sweep(config, runs, str(tmp_path), train_fn=fake3)
  assert fake3.calls == [] and len(result.skipped) == 8 and not result.failed

  # Another base config: still skipped (overrides match), with a warning.
  config.rl.lr = 2e-5
  lines = []
  result = ablate.sweep(
    config, runs, str(tmp_path), train_fn=FakeTrain(), log=lines.append
  )
  assert len(result.skipped) == 8
  assert all('WARNING: made from another base config' in line for line in lines)
  config.rl.lr = 1e-5

  # Another budget in the same workdir is a conflict, not a silent reuse.
  other = studies.plan('table4a', config, seeds=1, budget_updates=5, only=('vmr',))
  result = ablate.sweep(config, other, str(tmp_path), train_fn=FakeTrain())
  assert len(result.failed) == 1 and 'other overrides' in result.failed[0][1]


def test_records_from_other_starting_weights_are_not_reused(tmp_path):
  config = toy_config()
  ckpt = tmp_path / 'ckpt'
  ckpt.mkdir()
  (ckpt / 'manifest.json').write_text('{"parts": [], "saved_at": "monday"}')
  config.init_checkpoint = str(ckpt)
  runs = studies.plan('table4a', config, seeds=1, budget_updates=2, only=('vmr',))
  ablate.sweep(config, runs, str(tmp_path / 'w'), train_fn=FakeTrain())
  rec = json.loads((tmp_path / 'w/table4a/vmr/seed0/record.json').read_text())
  assert rec['weights_fingerprint'] == ablate.weights_fingerprint(config)
  # Same path, re-exported weights (a new manifest): a conflict, no reuse.
  (ckpt / 'manifest.json').write_text('{"parts": [], "saved_at": "tuesday"}')
  fake = FakeTrain()
  result = ablate.sweep(config, runs, str(tmp_path / 'w'), train_fn=fake)
  assert fake.calls == [] and 'other starting weights' in result.failed[0][1]
  assert ablate.weights_fingerprint(toy_config()) == 'random init'


def test_config_fingerprint_ignores_only_settings_that_cannot_change_a_run():
  config = toy_config()
  base = ablate.config_fingerprint(config)
  config.tokenizer.conv_weight_grad = 'xla'  # RL never differentiates the tokenizer
  config.compilation_cache_dir = '/tmp/somewhere'
  config.ocr.retries = 3  # changes only reads that would otherwise fail
  assert ablate.config_fingerprint(config) == base
  config.ocr.timeout_s = 5.0
  assert ablate.config_fingerprint(config) != base
  config.ocr.timeout_s = toy_config().ocr.timeout_s
  config.rl.lr = config.rl.lr * 2
  assert ablate.config_fingerprint(config) != base


def test_run_study_exit_code_report_and_time_limit(tmp_path, capsys):
  config = toy_config()
  kw = dict(seeds=2, budget_updates=2, train_fn=FakeTrain(crash=['K2/seed0']))
  assert ablate.run_study(config, 'table5', str(tmp_path), **kw) == 1
  err = capsys.readouterr().err
  assert 'failed: table5/K2/seed0: RuntimeError: boom' in err
  md = (tmp_path / 'table5.md').read_text()
  assert '| K1 |' in md and '| K2 |' in md and 'n/a' in md
  assert (tmp_path / 'table5_reward.png').stat().st_size > 0
  # --max_minutes=0: nothing new starts; the missing run is left for later.
  fake = FakeTrain()
  code = ablate.run_study(
    config, 'table5', str(tmp_path), max_minutes=0.0, **{**kw, 'train_fn': fake}
  )
  assert code == 0 and fake.calls == []
  assert 'left for next time' in capsys.readouterr().out
  # --report alone and --dry_run never train.
  (tmp_path / 'table5.md').unlink()
  assert ablate.run_study(config, 'table5', str(tmp_path), report_only=True, **kw) == 0
  assert (tmp_path / 'table5.md').exists()
  assert ablate.run_study(config, 'table5', str(tmp_path), dry_run=True, **kw) == 0
  out = capsys.readouterr().out
  assert 'table5/K2/seed0  [todo]' in out and 'table5/K1/seed0  [done]' in out


def _record(run, seed, wa_before, wa_after, ned_before, ned_after, curve=()):
  return {
    'study': 'table3b',
    'run': run,
    'seed': seed,
    'overrides': {'rl.mode': 'full', 'seed': seed, 'rl.num_updates': 4},
    'budget_updates': 4,
    'word_accuracy_before': wa_before,
    'word_accuracy_after': wa_after,
    'ned_before': ned_before,
    'ned_after': ned_after,
    'wall_seconds': 120.0,
    'reward_curve': [list(p) for p in curve],
  }


def test_aggregate_mean_std_and_gain():
  records = [
    _record('b', 0, 0.1, 0.2, 0.5, 0.6, [(0, 1.0), (1, 2.0)]),
    _record('b', 1, 0.1, 0.4, 0.5, 0.7, [(0, 3.0), (1, 4.0)]),
    _record('b', 2, 0.2, 0.6, 0.5, 0.8, [(0, 5.0)]),
    _record('a', 0, 0.0, 0.3, 0.1, 0.9),
  ]
  rows = aggregate.aggregate(records, order=('b', 'a'))
  assert [r.name for r in rows] == ['b', 'a']
  b, a = rows
  assert b.seeds == (0, 1, 2)
  assert b.wa.mean == pytest.approx(0.4) and b.wa.std == pytest.approx(0.2)
  assert b.ned.mean == pytest.approx(0.7) and b.ned.std == pytest.approx(0.1)
  assert b.d_wa.mean == pytest.approx((0.1 + 0.3 + 0.4) / 3)
  assert b.d_wa.std == pytest.approx(np.std([0.1, 0.3, 0.4], ddof=1))
  assert b.d_ned.mean == pytest.approx(0.2) and b.minutes.mean == pytest.approx(2.0)
  assert a.wa.n == 1 and math.isnan(a.wa.std) and a.wa.fmt() == '0.3000'
  assert b.wa.fmt() == '0.4000 ± 0.2000' and b.d_ned.fmt(True) == '+0.2000 ± 0.1000'
  md = aggregate.markdown('table3b', rows, records)
  assert '| b | rl.mode=full | 3 | 0.4000 ± 0.2000 | 0.7000 ± 0.1000 |' in md
  ours = md.split('Paper:')[0]
  assert ours.count('| n/a | n/a |') == 2 and 'Warning' not in md
  records[0]['base_config_fingerprint'] = 'x'
  records[1]['base_config_fingerprint'] = 'y'
  assert 'different base configs' in aggregate.markdown('table3b', rows, records)
  steps, mean = aggregate.mean_curves(records)['b']
  np.testing.assert_array_equal(steps, [0, 1])
  np.testing.assert_allclose(mean, [3.0, 3.0])


def test_cli_dry_run_lists_the_runs():
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'varrl_jax.experiments.ablate',
      '--config=configs/tiny.py',
      '--study=table3a',
      '--dry_run',
      '--budget_updates=5',
      '--config.rl.lr=2e-5',
      '--workdir=/nonexistent/ablate',
    ],
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  # configs/tiny.py: scales at 32, 64, 96, 160 px, so m64 and m96 are middle.
  assert 'table3a/m64/seed0  [todo]' in proc.stdout
  assert 'table3a/m96/seed1  [todo]' in proc.stdout
  assert (
    'python -m varrl_jax.train --config=configs/tiny.py --config.rl.lr=2e-5 '
    '--config.eval.num_prompts=512 --config.rl.mode=full --config.rl.vmr.m=2 --config.seed=1 '
    '--config.rl.num_updates=5 --workdir=/nonexistent/ablate/table3a/m96/seed1'
  ) in proc.stdout
  assert 'table3a/adaptive/seed1  [todo]' in proc.stdout
  assert '6 runs of table3a' in proc.stdout


class ReadsWhenBright:
  """Reads 'OPEN' when the top-left pixel is bright: rewards vary across samples."""

  def read(self, image):
    if int(image[0, 0].mean()) > 127:
      return OcrResult(words=(OcrWord('OPEN', (0.0, 0.0, 8.0, 8.0), 0.9),))
    return OcrResult(words=(OcrWord('QQ', (20.0, 8.0, 30.0, 16.0), 0.5),))


def test_one_real_run_of_the_smallest_study(tmp_path):
  """table3a on the toy model (one middle scale): one seed, one update, real train."""
  config = toy_config()
  config.rl.prompts_per_update = 2
  config.rl.group_size = 2
  config.rl.vmr.num_branches = 2
  config.rl.inner_updates = 1
  config.sampling.top_k = 8
  config.eval.num_prompts = 2
  config.eval.batch_size = 2
  config.eval.grid_images = 2
  t0 = time.time()
  code = ablate.run_study(
    config,
    'table3a',
    str(tmp_path),
    seeds=1,
    budget_updates=1,
    only=('m16', 'adaptive'),
    pool_factory=lambda: OcrPool(ReadsWhenBright, num_workers=0),
  )
  assert code == 0
  # The second run skipped its own evaluation before RL and took the first's.
  second = tmp_path / 'table3a/adaptive/seed0'
  assert (
    not (second / 'eval_before').exists() and (second / 'before_after.png').exists()
  )
  rec2 = json.loads((second / 'record.json').read_text())
  assert rec2['before_from'] == 'table3a/m16/seed0' and rec2['split_curve'] == [
    [0, 1.0]
  ]
  rec = json.loads((tmp_path / 'table3a/m16/seed0/record.json').read_text())
  # Per image, the same prompts and keys before and after: pooled figures
  # equal the summaries'.
  before, after = rec['eval_before'], rec['eval_after']
  assert len(after['words']) == 2 and before['digest'] == after['digest']
  for arrays, key in ((before, 'word_accuracy_before'), (after, 'word_accuracy_after')):
    assert sum(arrays['correct']) / sum(arrays['words']) == pytest.approx(rec[key])
  assert sum(after['similarity']) / sum(after['words']) == pytest.approx(
    rec['ned_after'], abs=1e-4
  )
  assert rec['eval_prompts'] == 2 and rec['default_m'] == 2  # toy: m '2' = last
  for key in ('word_accuracy_before', 'word_accuracy_after', 'ned_before', 'ned_after'):
    assert math.isfinite(rec[key]) and 0.0 <= rec[key] <= 1.0, key
  assert rec['overrides'] == {
    'rl.mode': 'full',
    'rl.vmr.m': '1',
    'seed': 0,
    'rl.num_updates': 1,
  }
  assert rec['updates'] == 1 and len(rec['reward_curve']) == 1
  assert math.isfinite(rec['reward_curve'][0][1])
  assert 0 < rec['wall_seconds'] < time.time() - t0
  assert (tmp_path / 'table3a.md').exists() and (
    tmp_path / 'table3a_reward.png'
  ).exists()


def test_a_run_with_the_same_config_and_seed_takes_the_finished_record(tmp_path):
  """tiny's defaults are Table 5's K = 2: that run is Table 4a's full method."""
  config = toy_config()
  assert config.rl.vmr.num_branches == 2 and config.rl.mode == 'full'
  full = studies.plan(
    'table4a', config, seeds=2, budget_updates=2, only=('vmr+panw+mp',)
  )
  ablate.sweep(config, full, str(tmp_path), train_fn=FakeTrain())

  fake, lines = FakeTrain(), []
  runs = studies.plan('table5', config, seeds=2, budget_updates=2)
  result = ablate.sweep(config, runs, str(tmp_path), train_fn=fake, log=lines.append)
  trained = sorted(os.path.relpath(p, tmp_path) for p in fake.calls)
  assert trained == [
    'table5/K1/seed0',
    'table5/K1/seed1',
    'table5/K4/seed0',
    'table5/K4/seed1',
  ]
  assert result.reused == [
    ('table5/K2/seed0', 'table4a/vmr+panw+mp/seed0'),
    ('table5/K2/seed1', 'table4a/vmr+panw+mp/seed1'),
  ]
  src = json.loads((tmp_path / 'table4a/vmr+panw+mp/seed1/record.json').read_text())
  rec = json.loads((tmp_path / 'table5/K2/seed1/record.json').read_text())
  assert rec['same_config_as'] == 'table4a/vmr+panw+mp/seed1'
  assert (rec['study'], rec['run'], rec['seed']) == ('table5', 'K2', 1)
  assert rec['overrides'] == {
    'rl.mode': 'full',
    'rl.vmr.num_branches': 2,
    'seed': 1,
    'rl.num_updates': 2,
  }
  for key in (
    'word_accuracy_after',
    'ned_after',
    'reward_curve',
    'wall_seconds',
    'git',
  ):
    assert rec[key] == src[key]
  assert any('same config and seed as table4a/vmr+panw+mp/seed0' in x for x in lines)
  table = aggregate.markdown(
    'table5',
    aggregate.aggregate(aggregate.load_records(str(tmp_path), 'table5')),
    aggregate.load_records(str(tmp_path), 'table5'),
  )
  assert 'K2 (seeds 0, 1) is the same config and seed as table4a/vmr+panw+mp' in table

  # The next sitting skips the copies like any record; a copy is never a source.
  fake2 = FakeTrain()
  result = ablate.sweep(config, runs, str(tmp_path), train_fn=fake2)
  assert fake2.calls == [] and len(result.skipped) == 6
  sources = [
    path
    for path, _ in ablate.finished_runs(
      config, str(tmp_path), ablate.weights_fingerprint(config)
    ).values()
  ]
  assert 'table5/K1/seed0' in sources and not any('K2' in p for p in sources)

  # Another budget is another config: trained, not copied; and the flag turns
  # reuse off.
  other = studies.plan('table5', config, seeds=1, budget_updates=3, only=('K2',))
  fake3 = FakeTrain()
  ablate.sweep(config, other, str(tmp_path / 'b3'), train_fn=fake3)
  assert len(fake3.calls) == 1
  fake4 = FakeTrain()
  runs4 = studies.plan('table3b', config, seeds=1, budget_updates=2, only=('alpha0.6',))
  assert config.rl.panw.alpha == 0.6
  ablate.sweep(config, runs4, str(tmp_path), train_fn=fake4, reuse_same_config=False)
  assert len(fake4.calls) == 1


def test_a_run_whose_evaluation_lost_images_to_ocr_is_flagged_and_never_reused(
  tmp_path,
):
  """OCR that crashes or times out reads nothing: the record counts those
  images, the log and report warn, the run is no source for another study,
  and moved aside (not seed<N>) it is trained again."""
  config = toy_config()
  full = studies.plan(
    'table4a', config, seeds=2, budget_updates=2, only=('vmr+panw+mp',)
  )
  lines = []
  ablate.sweep(
    config,
    full,
    str(tmp_path),
    train_fn=FakeTrain(unread=['seed0']),
    log=lines.append,
  )
  bad = tmp_path / 'table4a/vmr+panw+mp/seed0'
  rec = json.loads((bad / 'record.json').read_text())
  assert (rec['ocr_failed_before'], rec['ocr_failed_after']) == (0, 2)
  good = json.loads((tmp_path / 'table4a/vmr+panw+mp/seed1/record.json').read_text())
  assert (good['ocr_failed_before'], good['ocr_failed_after']) == (0, 0)
  assert any('seed0' in x and '2 evaluation images unread' in x for x in lines)
  records = aggregate.load_records(str(tmp_path), 'table4a')
  table = aggregate.markdown('table4a', aggregate.aggregate(records), records)
  assert 'OCR failed (crash or timeout) on evaluation images of vmr+panw+mp/seed0' in (
    table
  )
  assert 'seed1 (' not in table

  # Table 5's K = 2 has the same configs: seed 1 is copied, seed 0 trained.
  fake = FakeTrain()
  runs = studies.plan('table5', config, seeds=2, budget_updates=2, only=('K2',))
  result = ablate.sweep(config, runs, str(tmp_path), train_fn=fake)
  assert [os.path.relpath(p, tmp_path) for p in fake.calls] == ['table5/K2/seed0']
  assert result.reused == [('table5/K2/seed1', 'table4a/vmr+panw+mp/seed1')]

  # A rerun skips the flagged record with a warning; moved aside, the run is
  # made again (here: copied from Table 5's clean twin) and the moved folder
  # is no record of the study.
  lines = []
  ablate.sweep(config, full, str(tmp_path), train_fn=FakeTrain(), log=lines.append)
  assert any('unread, OCR failed; move' in x for x in lines)
  bad.rename(tmp_path / 'table4a/vmr+panw+mp/seed0.ocr-failures')
  fake = FakeTrain()
  result = ablate.sweep(config, full, str(tmp_path), train_fn=fake)
  assert fake.calls == []
  assert result.reused == [('table4a/vmr+panw+mp/seed0', 'table5/K2/seed0')]
  records = aggregate.load_records(str(tmp_path), 'table4a')
  assert sorted(r['seed'] for r in records) == [0, 1]
  assert all(r['ocr_failed_after'] == 0 for r in records)


class EvalWritingTrain:
  """Writes per-image eval records like `eval.heldout` and honours eval.before."""

  def __init__(self):
    self.before_flags = []

  def _write(self, workdir, name, correct):
    out = os.path.join(workdir, name)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'records.jsonl'), 'w') as f:
      for i, c in enumerate(correct):
        rec = {'key': f'k{i}', 'targets': ['W'], 'n_words': 1, 'n_correct': c}
        f.write(json.dumps({**rec, 'similarity': float(c)}) + '\n')

  def __call__(self, config, workdir, pool=None):
    self.before_flags.append(bool(config.eval.before))
    with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
      f.write(json.dumps({'step': 0, 'reward/mean': 0.1}) + '\n')
    before = None
    if config.eval.before:
      self._write(workdir, 'eval_before', [1, 0, 0, 0])
      before = {'word_accuracy': 0.25, 'ned': 0.25, 'n_failed': 0}
    self._write(workdir, 'eval_after', [1, 1, 0, 0])
    return {
      'before': before,
      'after': {'word_accuracy': 0.5, 'ned': 0.5, 'n_failed': 0},
    }


def test_the_first_run_evaluates_the_start_and_the_others_share_it(tmp_path):
  config = toy_config()
  runs = studies.plan('table5', config, seeds=1, budget_updates=1)
  fake = EvalWritingTrain()
  ablate.sweep(config, runs, str(tmp_path), train_fn=fake)
  assert fake.before_flags == [True, False, False]
  first = json.loads((tmp_path / 'table5/K1/seed0/record.json').read_text())
  third = json.loads((tmp_path / 'table5/K4/seed0/record.json').read_text())
  assert 'before_from' not in first and third['before_from'] == 'table5/K1/seed0'
  assert third['eval_before'] == first['eval_before']
  assert third['word_accuracy_before'] == 0.25 and third['eval_before']['correct'] == [
    1,
    0,
    0,
    0,
  ]
  # eval.before is not part of a run's identity, nor of its evaluation's.
  assert third['eval_settings'] == first['eval_settings']
  assert third['eval_after']['digest'] == first['eval_before']['digest']
  # A later sitting takes the finished runs' evaluation too.
  more = studies.plan('table4a', config, seeds=1, budget_updates=1, only=('vanilla',))
  ablate.sweep(config, more, str(tmp_path), train_fn=fake)
  assert fake.before_flags[-1] is False
