"""Bad input at the command line gives one clear error line and exit code 2."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=300, env=None):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', **(env or {}))
  return subprocess.run(
    [
      sys.executable,
      '-m',
      'varrl_jax.sample',
      '--config=configs/tiny.py',
      '--ocr=none',
      *args,
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def _error_lines(proc):
  return [line for line in proc.stderr.splitlines() if line.startswith('error:')]


@pytest.mark.parametrize(
  'args, expected',
  [
    (['--config.model.num_layer=2'], "error: unknown config key 'model.num_layer'"),
    (['--config.sampling.top_k=two'], 'error: bad command-line flag'),
    (['--prompt='], 'error: prompt 0 is empty'),
    (
      ['--prompt=' + 'x' * 200],
      'error: prompt 0 is too long: 200 bytes, at most 70 fit',
    ),
    (
      ['--config.scales=((1,4),(2,8))'],
      'error: config.scales[-1]=(2, 8) must equal the latent grid',
    ),
    (
      ['--config.init_checkpoint=/nonexistent/ckpt'],
      'error: checkpoint /nonexistent/ckpt: no such directory; recreate it with: '
      'python -m varrl_jax.pretrain',
    ),
  ],
)
def test_bad_input_is_one_error_line(args, expected):
  proc = _run(*args)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = _error_lines(proc)
  assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr


def test_wrong_image_size_is_one_error_line(tmp_path):
  path = tmp_path / 'big.png'
  Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
  proc = _run(f'--reconstruct={path}')
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = _error_lines(proc)
  assert len(lines) == 1, proc.stderr[-2000:]
  assert (
    'image is 64x64 (HxW), the config expects 40x160 (config.image_size)' in lines[0]
  )


def test_sample_writes_a_grid(tmp_path):
  proc = _run(
    f'--workdir={tmp_path}', '--num_per_prompt=1', "--prompt=a sign that reads 'OPEN'"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'image grid written to' in proc.stdout
  img = np.asarray(Image.open(tmp_path / 'samples.png'))
  assert img.ndim == 3 and img.shape[0] >= 64
  with np.load(tmp_path / 'samples.npz') as z:
    assert z['tokens'].shape == (1, 156) and z['tokens'].dtype == np.int32
    assert z['images'].shape == (1, 40, 160, 3) and z['images'].dtype == np.uint8
    assert list(z['prompts']) == ["a sign that reads 'OPEN'"]


def test_compilation_cache_is_written_then_hit(tmp_path):
  """--config.compilation_cache_dir: the first run writes the sampler, the second reads it."""
  cache = tmp_path / 'cache'
  args = (
    f'--workdir={tmp_path / "out"}',
    '--num_per_prompt=1',
    "--prompt=a sign that reads 'OPEN'",
    f'--config.compilation_cache_dir={cache}',
  )
  first = _run(*args)
  assert first.returncode == 0, first.stderr[-2000:]
  entries = sorted(p.name for p in cache.iterdir() if p.name.startswith('jit_'))
  assert any(name.startswith('jit__sample_impl') for name in entries), entries
  env = {'JAX_DEBUG_LOG_MODULES': 'jax._src.compiler'}
  second = _run(*args, env=env)
  assert second.returncode == 0, second.stderr[-2000:]
  assert "Persistent compilation cache hit for 'jit__sample_impl'" in second.stderr
  assert "CACHE MISS for 'jit__sample_impl'" not in second.stderr


@pytest.mark.parametrize(
  'args, expected',
  [
    (
      ['--config.rl.rewards=ocr:0.5,jpeg'],
      "error: config.rl.rewards='ocr:0.5,jpeg': 'jpeg': unknown reward 'jpeg' "
      '(known rewards: clipscore, jpeg_compressibility, jpeg_incompressibility, '
      'ocr, preference; your own: MODULE:ATTR[:WEIGHT])',
    ),
    (
      ['--config.rl.prompts=classes:1,x'],
      "error: config.rl.prompts='classes:1,x': 'x'",
    ),
  ],
)
def test_train_reports_a_bad_reward_or_prompt_spec_in_one_line(
  tmp_path, args, expected
):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'varrl_jax.train',
      '--config=configs/tiny.py',
      f'--workdir={tmp_path}',
      *args,
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = _error_lines(proc)
  assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr


def test_a_typo_inside_a_config_file_is_one_error_naming_file_line_and_keys(tmp_path):
  """The base config is locked: a config file cannot add a key by a typo
  (it would otherwise train with the default of the key it meant)."""
  config = tmp_path / 'mine.py'
  config.write_text(
    'from varrl_jax.config import base_config\n'
    '\n'
    '\n'
    'def get_config(arg=None):\n'
    '  c = base_config()\n'
    '  c.rl.panw.apha = 0.8\n'
    '  return c\n'
  )
  proc = subprocess.run(
    [sys.executable, '-m', 'varrl_jax.train', f'--config={config}', '--workdir=x'],
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = _error_lines(proc)
  assert len(lines) == 1 and lines[0].startswith(
    f"error: unknown config key 'rl.panw.apha' set in {config}:6: c.rl.panw.apha = 0.8 "
    '(config files change the keys of varrl_jax/config.py, never add them); '
    'did you mean rl.panw.alpha'
  ), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'x').exists()
