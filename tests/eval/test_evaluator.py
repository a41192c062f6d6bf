"""The evaluator end to end: sampling, OCR, metrics, outputs, determinism, errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import toy_config
from tests.data.cvtg_fixture import make_cvtg_fixture, write_bytes
from varrl_jax.data import synthetic
from varrl_jax.eval import evaluator, prompt_sets
from varrl_jax.models.family import build_model
from varrl_jax.models.text import PromptError
from varrl_jax.rewards.pool import OcrPool
from varrl_jax.rewards.types import OcrResult, OcrWord

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ReadsOpen:
  """A fake engine that reads 'OPEN' in every image."""

  def read(self, image):
    return OcrResult(words=(OcrWord('OPEN', (0, 0, 4, 4), 0.9),))


def _config():
  c = toy_config()
  c.eval.batch_size = 3
  c.eval.grid_images = 4
  c.eval.num_prompts = 5
  return c


def test_evaluate_scores_with_the_metric_definitions(toy):
  _, model, params = toy
  config = _config()
  prompts = [
    prompt_sets.EvalPrompt("a sign that reads 'OPEN'", ('OPEN',), {'n': 1}, 'a'),
    prompt_sets.EvalPrompt("'OPEN' and 'SHUT'", ('OPEN', 'SHUT'), {'n': 2}, 'b'),
    prompt_sets.EvalPrompt("'OPEN NOW'", ('OPEN NOW',), {'n': 2}, 'c'),
    prompt_sets.EvalPrompt("'BAR'", ('BAR',), {'n': 1}, 'd'),
  ]
  with OcrPool(ReadsOpen, num_workers=0) as pool:
    report = evaluator.evaluate(model, params, config, prompts, pool, progress=False)
  # Target words: OPEN | OPEN SHUT | OPEN NOW | BAR = 6, of which OPEN x3 read.
  assert report.summary.n_words == 6 and report.summary.n_correct == 3
  assert report.summary.word_accuracy == pytest.approx(0.5)
  # NED: 1 - ned('shut','open')=0, 'now' vs 'open' -> 1 - 3/4 ... computed by metrics.
  assert 0.5 <= report.summary.ned < 1.0
  assert report.by_group['n'][1].n_words == 2 and report.by_group['n'][1].n_correct == 1
  assert report.grid_images.shape == (4, 16, 32, 3)
  assert [r['key'] for r in report.records] == ['a', 'b', 'c', 'd']


def test_evaluation_is_deterministic(toy):
  _, model, params = toy
  config = _config()
  prompts = prompt_sets.synthetic_prompts('heldout', 4)
  with OcrPool(ReadsOpen, num_workers=0) as pool:
    a = evaluator.evaluate(model, params, config, prompts, pool, progress=False)
    b = evaluator.evaluate(model, params, config, prompts, pool, progress=False)
  np.testing.assert_array_equal(a.grid_images, b.grid_images)
  assert a.flat == b.flat


def test_prompt_too_long_names_the_example(toy):
  config = toy[0].copy_and_resolve_references()
  config.model.text_len = 40
  model = build_model(config)
  p = prompt_sets.EvalPrompt('x' * 100, ('X',), {}, 'CVTG/3/7')
  with pytest.raises(
    PromptError, match='CVTG/3/7: prompt is too long.*truncate_prompts'
  ):
    evaluator.encode_prompts(model, [p])
  cond = evaluator.encode_prompts(model, [p], truncate_long=True)
  assert cond['text_ids'].shape == (1, 40)


def test_synthetic_sets_validate():
  with pytest.raises(ValueError, match='unknown synthetic split'):
    prompt_sets.synthetic_prompts('test', 3)
  with pytest.raises(ValueError, match='num_prompts > 0'):
    prompt_sets.synthetic_prompts('heldout', 0)


def test_renders_and_reconstructions_sources(toy):
  _, model, params = toy
  config = _config()
  variety = synthetic.Variety(max_words=1)
  prompts = prompt_sets.synthetic_prompts('heldout', 4, seed=2, variety=variety)
  ds = synthetic.SyntheticTextDataset('heldout', (16, 32), seed=2, variety=variety)
  renders = np.stack([ds[i].image for i in range(4)])
  with OcrPool(ReadsOpen, num_workers=0) as pool:
    got = evaluator.evaluate(
      model, params, config, prompts, pool, progress=False, source='renders'
    )
    rec = evaluator.evaluate(
      model, params, config, prompts, pool, progress=False, source='reconstructions'
    )
  np.testing.assert_array_equal(got.grid_images, renders)
  want = np.asarray(model.decode_tokens(params, model.encode_images(params, renders)))
  np.testing.assert_array_equal(rec.grid_images, want)
  assert not np.array_equal(rec.grid_images, renders)


def test_renders_need_synthetic_prompts(toy):
  _, model, params = toy
  prompts = [prompt_sets.EvalPrompt("'OPEN'", ('OPEN',), {}, 'CVTG/1/0')]
  with OcrPool(ReadsOpen, num_workers=0) as pool:
    with pytest.raises(ValueError, match='CVTG/1/0 has no ground-truth render'):
      evaluator.evaluate(
        model, params, _config(), prompts, pool, progress=False, source='renders'
      )


def _evaluate_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run(
    [sys.executable, '-m', 'varrl_jax.evaluate', '--config=configs/tiny.py', *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


@pytest.mark.parametrize(
  'content, expected',
  [
    (b'{"data_list": [', 'error: CVTG/3.json: malformed JSON at line 1'),
    (
      b'{"data_list": [{"index": 0, "prompt": "a \'X\'", "carrier_list": [], "sentence_list": []}]}',
      "error: CVTG/3.json: data_list[0] (index 0): 'sentence_list' is empty",
    ),
    (b'{"data_list": [{"prompt": "caf\xe9"}]}', 'error: CVTG/3.json: not valid UTF-8'),
  ],
)
def test_cli_malformed_file_is_one_line(tmp_path, content, expected):
  make_cvtg_fixture(tmp_path)
  write_bytes(tmp_path, 'CVTG/3.json', content)
  proc = _evaluate_cli(f'--data=cvtg:{tmp_path}', f'--workdir={tmp_path / "out"}')
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and errors[0].startswith(expected), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr


def test_cli_missing_dataset_says_where_to_put_it(tmp_path):
  proc = _evaluate_cli(f'--data=cvtg:{tmp_path / "nowhere"}')
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1, proc.stderr[-2000:]
  assert errors[0].startswith(f'error: CVTG-2K root {tmp_path / "nowhere"} is not a')
  assert 'CVTG-Style' in errors[0] and 'Traceback' not in proc.stderr


@pytest.mark.slow
def test_cli_on_official_layout_writes_metrics_and_grid(tmp_path):
  make_cvtg_fixture(tmp_path / 'cvtg', n_per_file=1)
  out = tmp_path / 'out'
  proc = _evaluate_cli(
    f'--data=cvtg:{tmp_path / "cvtg"}',
    f'--workdir={out}',
    '--config.eval.batch_size=8',
    '--config.eval.truncate_prompts=True',
    '--config.ocr.num_workers=0',
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  last = proc.stdout.strip().splitlines()[-1]
  assert 'Word Accuracy' in last and 'NED' in last
  metrics = json.loads((out / 'metrics.json').read_text())
  assert metrics['num_prompts'] == 8
  assert 'subset=CVTG/word_accuracy' in metrics['metrics'] or any(
    'regions=' in k for k in metrics['metrics']
  )
  assert (out / 'grid.png').exists() and (out / 'samples.jsonl').exists()
