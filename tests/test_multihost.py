"""Two local CPU processes train like one (jax.distributed, gloo collectives).

`tests/multihost_worker.py` runs the whole RL job (`train.train`: held-out
eval, two 'full'-mode updates, train-state and final checkpoints) as

- a 2-process job, one CPU device per process: each process OCRs its own
  rows of every rollout and the rewards / boxes are all-gathered;
- a 1-process run of the same config on 2 fake CPU devices (the same
  (2, 1, 1) mesh, so the same programs and the same reduction order).

All three processes run at once.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests import multihost_worker
from varrl_jax import checkpoint
from varrl_jax.models.family import build_model
from varrl_jax.writers import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(workdir, num_processes, process_id, port, devices):
  env = dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
  )
  args = [str(workdir), str(num_processes), str(process_id), str(port)]
  return subprocess.Popen(
    [sys.executable, '-m', 'tests.multihost_worker', *args],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _wait(procs, timeout):
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=timeout)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  return outs


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  """Final params equal the 1-process run to 1e-6 (absolute; observed: equal),
  rewards and losses agree, and only process 0 wrote metrics and images."""
  port = _free_port()
  multi, single = tmp_path / 'two_processes', tmp_path / 'one_process'
  procs = [_start(multi, 2, i, port, devices=1) for i in range(2)]
  procs.append(_start(single, 1, 0, port, devices=2))
  outs = _wait(procs, timeout=600)
  assert 'process 1 of 2: done on 2 devices' in outs[1]
  assert 'process 0 of 1: done on 2 devices' in outs[2]

  model = build_model(multihost_worker.config())
  a = checkpoint.load_params(str(multi / 'checkpoints' / 'final'), model)
  b = checkpoint.load_params(str(single / 'checkpoints' / 'final'), model)
  init = model.init(jax.random.key(0))
  moved = 0.0
  for x, y, z in zip(*(jax.tree.leaves(t['transformer']) for t in (a, b, init))):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    moved = max(moved, float(np.abs(np.asarray(x) - np.asarray(z)).max()))
  assert moved > 1e-4  # the two updates did change the parameters

  ra, rb = (read_jsonl(str(d / 'metrics.jsonl')) for d in (multi, single))
  assert [r['step'] for r in ra] == [0, 1]  # one writer: process 0
  for x, y in zip(ra, rb):
    for key in ('reward/mean', 'reward/std', 'adv/std', 'mask/coverage'):
      assert x[key] == y[key], key
    assert 0 < x['mask/coverage'] < 1  # MP masks from the gathered boxes
    np.testing.assert_allclose(x['train/loss'], y['train/loss'], rtol=1e-5, atol=1e-7)
    assert x['ocr/images'] == y['ocr/images'] == 8  # each row read once in all
  assert sorted(os.listdir(multi / 'checkpoints' / 'state')) == ['1', '2']
  for name in ('masks.png', 'before_after.png', 'eval_after/metrics.json'):
    assert (multi / name).exists(), name
