"""CLIPScore as the evaluator's third metric (overall, per group, per image)."""

import numpy as np
import pytest

from tests.eval.test_evaluator import ROOT, ReadsOpen, _config, _evaluate_cli  # noqa: F401
from tests.models import clip_fixture as fx
from varrl_jax.data import synthetic
from varrl_jax.eval import evaluator, metrics, prompt_sets
from varrl_jax.rewards import clip as clip_rewards
from varrl_jax.rewards.pool import OcrPool


def test_metrics_average_clipscore_per_group():
  acc = metrics.MetricAccumulator()
  acc.add(['a'], ['a'], groups={'regions': 2}, clipscore=0.8)
  acc.add(['b'], ['x'], groups={'regions': 2}, clipscore=0.4)
  acc.add(['c'], ['c'], groups={'regions': 3}, clipscore=0.3)
  assert acc.summary().clipscore == pytest.approx(0.5)
  groups = acc.by_group()['regions']
  assert groups[2].clipscore == pytest.approx(0.6)
  assert groups[3].clipscore == pytest.approx(0.3)
  flat = acc.as_dict()
  assert flat['clipscore'] == pytest.approx(0.5)
  assert flat['regions=2/clipscore'] == pytest.approx(0.6)
  # Without CLIP scores nothing changes: no clipscore entries at all.
  plain = metrics.MetricAccumulator()
  plain.add(['a'], ['a'], groups={'regions': 2})
  assert plain.summary().clipscore is None
  assert not any('clipscore' in k for k in plain.as_dict())


def test_evaluator_reports_clipscore_of_each_image(toy, tmp_path):
  _, model, params = toy
  config = _config()
  fx.hf_tiny(str(tmp_path))
  config.rewards.clip.path = str(tmp_path)
  config.rewards.clip.batch_size = 2
  clip = clip_rewards.ClipScore(clip_rewards.embedder_from_config(config, 'clip'))
  variety = synthetic.Variety(max_words=2)
  prompts = prompt_sets.synthetic_prompts('heldout', 4, seed=2, variety=variety)
  with OcrPool(ReadsOpen, num_workers=0) as pool:
    report = evaluator.evaluate(
      model, params, config, prompts, pool, progress=False, source='renders', clip=clip
    )
  renders = report.grid_images
  want = clip.score(renders, [p.prompt for p in prompts], [p.targets for p in prompts])
  got = np.array([r['clipscore'] for r in report.records])
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert want.std() > 0  # the images score differently
  assert report.summary.clipscore == pytest.approx(want.mean(), abs=1e-6)
  for key, values in report.by_group.items():
    for value, s in values.items():
      rows = [i for i, p in enumerate(prompts) if p.groups[key] == value]
      assert s.clipscore == pytest.approx(want[rows].mean(), abs=1e-6)
  assert report.flat['clipscore'] == pytest.approx(want.mean(), abs=1e-6)


def test_cli_missing_clip_path_is_one_line(tmp_path):
  proc = _evaluate_cli(
    '--split=heldout',
    '--source=renders',
    '--config.eval.num_prompts=2',
    f'--config.rewards.clip.path={tmp_path / "no_clip"}',
    f'--workdir={tmp_path / "out"}',
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert errors == [
    f'error: config.rewards.clip: {tmp_path / "no_clip"}: no such file or directory'
  ]
