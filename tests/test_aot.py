"""Ahead-of-time TPU compile from this CPU host (`varrl_jax.aot`).

The compile test needs libtpu (the ``test`` extra installs it); without it,
it is skipped with that reason.
"""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from varrl_jax import aot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_LIBTPU = importlib.util.find_spec('libtpu') is not None


def _run(*args, timeout=1200):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run(
    [sys.executable, '-m', 'varrl_jax.aot', *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


@pytest.mark.parametrize(
  'name, expected',
  [
    ('v5p-128', ('v5p', 'v5p:4x4x4')),
    ('v5p-8', ('v5p', 'v5p:2x2x1')),
    ('v5e-16', ('v5e', 'v5e:4x4')),
    ('v6e-64', ('v6e', 'v6e:8x8')),
    ('v5p:2x2x2', ('v5p', 'v5p:2x2x2')),
  ],
)
def test_topology_names(name, expected):
  assert aot.parse_topology(name) == expected


@pytest.mark.parametrize('name', ['v5p-7', 'v9x-8', 'tpu', 'v5e-3'])
def test_unknown_topology_is_an_error(name):
  with pytest.raises(aot.TopologyError, match='unknown --topology'):
    aot.parse_topology(name)


def test_missing_libtpu_names_the_extra(monkeypatch):
  monkeypatch.setattr(aot.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(aot.TopologyError, match=r'pip install -e "\.\[tpu\]"'):
    aot.tpu_devices('v5p-8')


def test_bad_topology_is_one_error_line():
  proc = _run('--config=configs/tiny.py', '--topology=v5p-7', timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [ln for ln in proc.stderr.splitlines() if ln.startswith('error:')]
  assert len(errors) == 1 and 'unknown --topology' in errors[0], proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr


@pytest.mark.skipif(
  not HAS_LIBTPU, reason='libtpu not installed: pip install -e ".[tpu]"'
)
def test_tiny_compiles_for_v5p_8_with_splash_attention():
  """Both programs, with the splash kernel inside shard_map over a 4-chip mesh;
  no weights are loaded (the tiny config names a shipped checkpoint)."""
  proc = _run(
    '--config=configs/tiny.py',
    '--topology=v5p-8',
    '--config.model.attention=splash',
    '--config.mesh.data=2',
    '--config.mesh.fsdp=2',
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out = proc.stdout
  lines = out.strip().splitlines()
  assert lines[-1].startswith('fit: yes (train_step '), lines[-1]
  for program in ('train_step', 'sample'):
    table = out.split(f'== {program}:')[1].split('\n==')[0]
    assert 'data 2 x fsdp 2 x tensor 1 over 4 TPU v5p chips' in table
    hbm = re.search(r'HBM per chip +([\d.]+) of 95\.\d+ GiB', table)
    flops = re.search(r'FLOPs per chip +([\d.e+]+)', table)
    nbytes = re.search(r'bytes per chip +([\d.e+]+)', table)
    step = re.search(r'roofline time +([\d.e+-]+) s', table)
    for name in ('argument', 'temp', 'total'):
      m = re.search(rf'{name} +([\d.]+) GiB', table)
      assert m and float(m.group(1)) >= 0, (name, table)
    assert hbm and float(hbm.group(1)) > 0, table
    assert flops and float(flops.group(1)) > 0, table
    assert nbytes and float(nbytes.group(1)) > 0, table
    assert step and float(step.group(1)) > 0, table


@pytest.mark.skipif(
  not HAS_LIBTPU, reason='libtpu not installed: pip install -e ".[tpu]"'
)
def test_var_family_compiles_for_v5p_8():
  """The official VAR family (depth 2 of configs/var.py: the real schedule,
  VQ-VAE and vocabulary) through the same AOT path: both programs fit."""
  proc = _run(
    '--config=configs/var.py:2',
    '--topology=v5p-8',
    '--config.model.attention=splash',
    '--config.mesh.data=2',
    '--config.mesh.fsdp=2',
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert lines[-1].startswith('fit: yes (train_step '), lines[-1]
  assert 'x 680 tokens' in proc.stdout  # no prompt prefix: image tokens only


@pytest.mark.skipif(
  not HAS_LIBTPU, reason='libtpu not installed: pip install -e ".[tpu]"'
)
def test_infinity_lora_micro_batched_step_compiles_alone():
  """The infinity family (configs/infinity_2b.py at 256^2, two of its 32
  layers: the real width, text and bit head) with LoRA and 2 micro-batches;
  ``--programs=train_step`` compiles the step only."""
  proc = _run(
    '--config=configs/infinity_2b.py:256',
    '--topology=v5p-8',
    '--programs=train_step',
    '--config.model.infinity.depth=2',
    '--config.rl.lora.rank=4',
    '--config.rl.train_microbatches=2',
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out = proc.stdout
  assert 'x 521 tokens, LoRA rank 4, 4 micro-batches of 128 sequences' in out, out
  assert '== sample' not in out
  assert out.strip().splitlines()[-1].startswith('fit: yes (train_step '), out
