"""The Colab notebooks run top to bottom on CPU with small settings.

Each notebook is executed with nbclient in a ``python3`` kernel started from
this interpreter, with small values injected after its ``parameters`` cell
the way papermill does it (a cell tagged ``injected-parameters``). The
checks are on what the notebook produced: images of the config's shape, OCR
reads and rewards, the RL run's metrics, mask pictures and before/after grid.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import runpy
import sys

import nbclient
import nbformat
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLAB = ROOT / 'colab'
TINY = runpy.run_path(str(ROOT / 'configs' / 'tiny.py'))['get_config']()
_KERNEL_PYTHON = 'import sys\nprint("kernel python:", sys.executable)'


def _load(name: str):
  return nbformat.read(COLAB / name, as_version=4)


def _execute(name: str, parameters: dict, monkeypatch):
  """Runs notebook ``name`` with ``parameters`` injected; returns the notebook."""
  nb = _load(name)
  tagged = [
    i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', [])
  ]
  assert len(tagged) == 1, f'{name}: expected one cell tagged parameters'
  source = '\n'.join(f'{k} = {v!r}' for k, v in parameters.items())
  injected = nbformat.v4.new_code_cell(source)
  injected.metadata['tags'] = ['injected-parameters']
  nb.cells.insert(tagged[0] + 1, injected)
  nb.cells.append(nbformat.v4.new_code_cell(_KERNEL_PYTHON))
  # The kernel inherits this environment (and conftest's XLA_FLAGS).
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  client = nbclient.NotebookClient(
    nb,
    kernel_name='python3',
    timeout=600,
    # The working directory of the kernel: the notebooks find configs/ above it.
    resources={'metadata': {'path': str(COLAB)}},
  )
  client.execute()
  return nb


def _stdout(nb) -> str:
  return ''.join(
    o.get('text', '')
    for c in nb.cells
    if c.cell_type == 'code'
    for o in c.outputs
    if o.output_type == 'stream' and o.name == 'stdout'
  )


def _png_outputs(nb) -> int:
  return sum(
    'image/png' in o.get('data', {})
    for c in nb.cells
    if c.cell_type == 'code'
    for o in c.outputs
  )


def _check_kernel(nb) -> None:
  line = next(x for x in _stdout(nb).splitlines() if x.startswith('kernel python: '))
  kernel_python = line.removeprefix('kernel python: ')
  assert os.path.realpath(kernel_python) == os.path.realpath(sys.executable)


@pytest.mark.parametrize('name', ['quickstart.ipynb', 'grpo_text_rendering.ipynb'])
def test_notebook_is_committed_clean_and_states_its_runtime(name):
  nb = _load(name)
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == 'python3'
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert cell.outputs == [] and cell.execution_count is None, (
        f'{name}: commit notebooks without outputs'
      )
  first_code = next(c for c in nb.cells if c.cell_type == 'code')
  assert 'install' in first_code.metadata.get('tags', [])
  assert "find_spec('varrl_jax') is None" in first_code.source
  markdown = '\n'.join(c.source for c in nb.cells if c.cell_type == 'markdown')
  assert '**Runtime: CPU**' in markdown


@pytest.mark.slow
def test_quickstart_samples_shows_and_ocrs_images(tmp_path, monkeypatch):
  prompts = ["a red poster that reads 'SALE'", "a sign that reads 'OPEN'"]
  nb = _execute(
    'quickstart.ipynb',
    {'PROMPTS': prompts, 'NUM_PER_PROMPT': 2, 'OUTDIR': str(tmp_path)},
    monkeypatch,
  )
  _check_kernel(nb)
  height, width = TINY.image_size
  out = _stdout(nb)
  assert f'images: uint8 (4, {height}, {width}, 3)' in out
  assert 'weights: ' in out
  assert _png_outputs(nb) >= 2  # the sample grid and the OCR-captioned grid

  with open(tmp_path / 'ocr.json') as f:
    records = json.load(f)['records']
  assert [r['prompt'] for r in records] == [p for p in prompts for _ in range(2)]
  assert [r['targets'] for r in records] == [['SALE']] * 2 + [['OPEN']] * 2
  for r in records:
    assert isinstance(r['ocr'], list) and all(isinstance(t, str) for t in r['ocr'])
    # Comp + Sim - Pen: at most 2; -0.6 when nothing is read.
    assert math.isfinite(r['reward']) and r['reward'] <= 2.0
  grid = Image.open(tmp_path / 'samples.png')
  assert grid.mode == 'RGB'
  assert grid.width >= 2 * width * 2 and grid.height >= 2 * height * 2


@pytest.mark.slow
def test_grpo_notebook_runs_the_full_method(tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  nb = _execute(
    'grpo_text_rendering.ipynb',
    {
      'MODE': 'full',
      'NUM_UPDATES': 2,
      'PROMPTS_PER_UPDATE': 2,
      'GROUP_SIZE': 2,
      'EVAL_PROMPTS': 4,
      'WORKDIR': str(workdir),
    },
    monkeypatch,
  )
  _check_kernel(nb)
  out = _stdout(nb)
  assert 'VMR True' in out and 'PANW True' in out and 'MP True' in out
  assert 'held-out Word Accuracy' in out
  assert _png_outputs(nb) >= 3  # reward curve, masks, before/after grid

  with open(workdir / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  assert [r['step'] for r in records] == [0, 1]
  num_scales = len(TINY.scales)
  for r in records:
    assert math.isfinite(r['reward/mean'])
    assert r['phase/prefix'] == 1.0  # updates 0 and 1 of the 3 : 1 alternation
    for s in range(num_scales):
      assert 0.0 <= r[f'scale{s}/mask_coverage'] <= 1.0
      assert f'scale{s}/panw_weight' in r
  height, width = TINY.image_size
  masks = Image.open(workdir / 'masks.png')  # one panel per scale, stacked
  assert masks.height >= num_scales * height and masks.width >= width
  grid = Image.open(workdir / 'before_after.png')  # 4 before + 4 after
  assert grid.height >= 2 * height and grid.width >= 4 * width
  assert Image.open(workdir / 'reward_curve.png').width > 0
  for name in ('eval_before', 'eval_after'):
    with open(workdir / name / 'metrics.json') as f:
      metrics = json.load(f)['metrics']
    assert 0.0 <= metrics['word_accuracy'] <= 1.0, metrics
  assert (workdir / 'checkpoints' / 'final' / 'manifest.json').exists()
