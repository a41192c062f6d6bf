"""Sharding on 8 fake CPU devices (a subprocess sets the device count).

The cases live in `tests/test_sharding_cases.py` (skipped with fewer devices); run them directly with
``XLA_FLAGS=--xla_force_host_platform_device_count=8 pytest tests/ -k shard``.
"""

import os
import subprocess
import sys

import jax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(jax.device_count() >= 8, reason='the cases run in this process')
def test_shard_cases_on_8_fake_devices():
  env = dict(
    os.environ,
    XLA_FLAGS='--xla_force_host_platform_device_count=8',
    JAX_PLATFORMS='cpu',
  )
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'pytest',
      '-q',
      '-p',
      'no:cacheprovider',
      'tests/test_sharding_cases.py',
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
  assert ' passed' in proc.stdout and 'skipped' not in proc.stdout.splitlines()[-1]
