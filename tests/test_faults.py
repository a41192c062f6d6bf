"""Fault matrix of `python -m varrl_jax.train`: every row runs the real command
line in a subprocess and asserts the outcome (exit code, saved state, the
update a rerun resumes at, metrics.jsonl, bit-identical parameters), not a
log line.

| fault                        | outcome                                       |
|------------------------------|-----------------------------------------------|
| SIGTERM, then SIGINT, mid-run| exit 143 / 130, state saved; reruns resume at |
|                              | the next update; final state bit-identical    |
| newest state / record corrupt| resumes at the previous update, bit-identical |
| every state / record corrupt | exit 2, one error line, nothing deleted       |
| NaN loss inside the step     | exit 3, last finite params saved              |
| OCR worker crash + hang      | the update completes, failures counted        |

The model is the toy of tests/conftest.py on a random init (vanilla GRPO,
2 prompts x 2 samples, the JPEG reward: no OCR except in the OCR row).
Every subprocess shares one persistent compilation cache, so only the first
compiles. Faults that need a hook (NaN, OCR engine) go through
tests/fault_driver.py, which patches one function and then runs
`varrl_jax.train.main` as the command line does.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPDATES = 6
# tests/conftest.py's toy model, as overrides of configs/tiny.py.
TOY = (
  '--config=configs/tiny.py',
  '--config.init_checkpoint=',
  '--config.image_size=(16, 32)',
  '--config.scales=((1, 2), (2, 4), (4, 8))',
  '--config.tokenizer.downsample=4',
  '--config.tokenizer.channels=(8, 16, 16)',
  '--config.tokenizer.latent_dim=8',
  '--config.tokenizer.codebook_size=64',
  '--config.model.num_layers=2',
  '--config.model.d_model=32',
  '--config.model.num_heads=4',
  '--config.model.num_kv_heads=2',
  '--config.model.mlp_dim=64',
  '--config.model.scan_unroll=1',
  '--config.rl.mode=vanilla',
  '--config.rl.prompts_per_update=2',
  '--config.rl.group_size=2',
  '--config.rl.rollout_chunks=1',
  '--config.rl.inner_updates=1',
  '--config.rl.lr=1e-3',
  '--config.eval.num_prompts=2',
  '--config.eval.batch_size=2',
  '--config.eval.grid_images=2',
  '--config.checkpoint.keep=10',
)
JPEG = ('--config.rl.rewards=jpeg_compressibility', '--config.rl.prompts=classes:3,5,7')


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  cache = tmp_path_factory.mktemp('xla_cache')
  return dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    TF_CPP_MIN_LOG_LEVEL='3',
    JAX_COMPILATION_CACHE_DIR=str(cache),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
  )


def _command(workdir, *args, fault=None):
  module = ['-m', 'varrl_jax.train'] if fault is None else ['-m', 'tests.fault_driver']
  extra = [] if fault is None else [f'--fault={fault}']
  return [sys.executable, *module, *extra, *TOY, f'--workdir={workdir}', *args]


def _run(env, workdir, *args, fault=None):
  return subprocess.run(
    _command(workdir, *args, fault=fault),
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def _errors(proc):
  return [line for line in proc.stderr.splitlines() if line.startswith('error:')]


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def _steps(workdir):
  return [r['step'] for r in _records(workdir)]


def _state_dir(workdir):
  return os.path.join(workdir, 'checkpoints', 'state')


def _states(workdir):
  return sorted(int(n) for n in os.listdir(_state_dir(workdir)) if n.isdigit())


def _leaves(path):
  """Every array under an orbax tree at ``path``, as saved (no model needed)."""
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.restore(path)
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _train_state(workdir, update):
  return _leaves(os.path.join(_state_dir(workdir), str(update), 'state'))


def _params(path, part='transformer'):
  return _leaves(os.path.join(path, part))


def _final(workdir):
  final = os.path.join(workdir, 'checkpoints', 'final')
  return _params(final, 'tokenizer') + _params(final)


def _assert_bitwise_equal(a, b):
  assert len(a) == len(b) and a
  for x, y in zip(a, b):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x, y)


def _snapshot(root):
  """{relative path: sha1} of every file under ``root``."""
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      path = os.path.join(d, f)
      with open(path, 'rb') as fh:
        out[os.path.relpath(path, root)] = hashlib.sha1(fh.read()).hexdigest()
  return out


def _corrupt(workdir, update, what):
  """Damages the array files ('state') or the JSON record ('record') of a
  saved train state."""
  step = os.path.join(_state_dir(workdir), str(update))
  if what == 'record':
    # Half a write, or a record of another step (hand-edited, copied).
    text = '{"seed": 0, "upd' if update % 2 == 0 else json.dumps({'update': 0})
    with open(os.path.join(step, 'record', 'metadata'), 'w') as f:
      f.write(text)
    return
  for d, _, files in os.walk(os.path.join(step, 'state')):
    for f in files:
      if not f.startswith('_') and f != 'commit_success.txt':
        with open(os.path.join(d, f), 'wb') as fh:
          fh.write(b'garbage')


@pytest.fixture(scope='module')
def straight(env, tmp_path_factory):
  """UPDATES updates without a fault, a train state saved after each."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  proc = _run(
    env,
    workdir,
    *JPEG,
    f'--config.rl.num_updates={UPDATES}',
    '--config.checkpoint.every=1',
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _steps(workdir) == list(range(UPDATES))
  assert _states(workdir) == list(range(1, UPDATES + 1))
  return workdir


def _wait_for_records(proc, workdir, n, timeout_s=300):
  """Waits until metrics.jsonl holds ``n`` records (update n - 1 is done)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    assert proc.poll() is None, f'exited early with {proc.returncode}'
    if os.path.exists(path):
      with open(path) as f:
        if f.read().count('\n') >= n:
          return
    time.sleep(0.01)
  raise AssertionError(f'no {n} records in {path} after {timeout_s} s')


def _interrupted(env, workdir, sig, records_before):
  """Runs the command, sends ``sig`` once one more update is logged; returns
  (exit code, stdout, stderr)."""
  out, err = (os.path.join(workdir, f'{sig.name}.{s}') for s in ('out', 'err'))
  args = (*JPEG, f'--config.rl.num_updates={UPDATES}', '--config.checkpoint.every=100')
  with open(out, 'w') as fo, open(err, 'w') as fe:
    proc = subprocess.Popen(
      _command(workdir, *args), cwd=ROOT, env=env, stdout=fo, stderr=fe
    )
    try:
      _wait_for_records(proc, workdir, records_before + 1)
      proc.send_signal(sig)
      code = proc.wait(timeout=300)
    finally:
      if proc.poll() is None:
        proc.kill()
  with open(out) as fo, open(err) as fe:
    return code, fo.read(), fe.read()


@pytest.mark.slow
def test_sigterm_then_sigint_save_and_resume_bit_identically(env, straight, tmp_path):
  workdir, states = str(tmp_path), _state_dir(str(tmp_path))

  # SIGTERM once update 0 is logged: the update in flight finishes, its
  # state is saved (checkpoint.every is 100: only this save), exit 143.
  code, out, err = _interrupted(env, workdir, signal.SIGTERM, 0)
  assert code == 128 + signal.SIGTERM, err[-3000:]
  (first,) = _states(workdir)
  assert 1 <= first < UPDATES - 1, first  # it stopped before the last updates
  assert (
    f'SIGTERM: stopped after update {first - 1}; state saved to {states}/{first}' in out
  )
  assert _steps(workdir) == list(range(first))
  _assert_bitwise_equal(_train_state(workdir, first), _train_state(straight, first))

  # The rerun resumes at that update; SIGINT once it logged one: exit 130.
  code, out, err = _interrupted(env, workdir, signal.SIGINT, first)
  assert code == 128 + signal.SIGINT, err[-3000:]
  assert f'resuming from {states}/{first} (update {first})' in out
  second = _states(workdir)[-1]
  assert _states(workdir) == [first, second] and first < second < UPDATES, second
  assert f'SIGINT: stopped after update {second - 1}' in out
  assert _steps(workdir) == list(range(second))

  # The third run finishes: the same train state and parameters, bit for bit.
  proc = _run(
    env,
    workdir,
    *JPEG,
    f'--config.rl.num_updates={UPDATES}',
    '--config.checkpoint.every=100',
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'resuming from {states}/{second} (update {second})' in proc.stdout
  assert _steps(workdir) == list(range(UPDATES))
  _assert_bitwise_equal(_train_state(workdir, UPDATES), _train_state(straight, UPDATES))
  _assert_bitwise_equal(_final(workdir), _final(straight))


def _timeless(record):
  return {k: v for k, v in record.items() if k != 'time' and not k.startswith('time/')}


@pytest.mark.parametrize('what', ['state', 'record'])
def test_corrupt_newest_state_resumes_from_the_previous(env, straight, tmp_path, what):
  workdir, last = str(tmp_path / 'run'), UPDATES
  shutil.copytree(straight, workdir)
  _corrupt(workdir, last, what)
  proc = _run(
    env,
    workdir,
    *JPEG,
    f'--config.rl.num_updates={UPDATES}',
    '--config.checkpoint.every=1',
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  states = _state_dir(workdir)
  assert f'train checkpoint {states}/{last} is unreadable' in proc.stderr
  assert f'resuming from {states}/{last - 1} (update {last - 1})' in proc.stdout
  # The redone update's record replaced the old one (once per step), with
  # the straight run's values.
  records = _records(workdir)
  assert [r['step'] for r in records] == list(range(UPDATES))
  assert [_timeless(r) for r in records] == [_timeless(r) for r in _records(straight)]
  # The redone update replaced the damaged state: both equal the straight run's.
  _assert_bitwise_equal(_train_state(workdir, last), _train_state(straight, last))
  _assert_bitwise_equal(_final(workdir), _final(straight))


@pytest.mark.parametrize('what', ['state', 'record'])
def test_every_state_corrupt_is_one_error_and_deletes_nothing(
  env, straight, tmp_path, what
):
  workdir = str(tmp_path / 'run')
  shutil.copytree(straight, workdir)
  for update in _states(workdir):
    _corrupt(workdir, update, what)
  checkpoints = os.path.join(workdir, 'checkpoints')
  before, metrics = _snapshot(checkpoints), _records(workdir)
  proc = _run(
    env,
    workdir,
    *JPEG,
    f'--config.rl.num_updates={UPDATES + 2}',
    '--config.checkpoint.every=1',
  )
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  (line,) = _errors(proc)
  assert line.startswith(
    f'error: {_state_dir(workdir)}: no readable train checkpoint ('
  )
  assert line.endswith('delete the directory to start over')
  for update in range(1, UPDATES + 1):
    assert f'{update}: ' in line
  if what == 'record':
    assert f'{UPDATES - 1}: record has update 0, not {UPDATES - 1}' in line
  assert _snapshot(checkpoints) == before
  assert _records(workdir) == metrics


def test_nan_loss_in_the_step_stops_with_the_last_finite_params(
  env, straight, tmp_path
):
  workdir = str(tmp_path)
  proc = _run(
    env,
    workdir,
    *JPEG,
    f'--config.rl.num_updates={UPDATES}',
    '--config.checkpoint.every=1',
    fault='nan_step:1',
  )
  saved = os.path.join(workdir, 'checkpoints', 'nonfinite_update1')
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert _errors(proc) == [
    f'error: loss is nan at update 1 (full phase); stopped, checkpoint saved to {saved}'
  ]
  assert _steps(workdir) == [0] and _states(workdir) == [1]
  # The NaN step changed nothing: the saved parameters are those after
  # update 0, finite, and the same as the straight run's.
  params = _params(saved)
  assert all(np.isfinite(p).all() for p in params)
  with ocp.StandardCheckpointer() as ckptr:
    state = ckptr.restore(os.path.join(_state_dir(workdir), '1', 'state'))
  _assert_bitwise_equal(
    params, [np.asarray(x) for x in jax.tree.leaves(state['params'])]
  )
  with ocp.StandardCheckpointer() as ckptr:
    reference = ckptr.restore(os.path.join(_state_dir(straight), '1', 'state'))
  _assert_bitwise_equal(
    params, [np.asarray(x) for x in jax.tree.leaves(reference['params'])]
  )
  with open(os.path.join(saved, 'manifest.json')) as f:
    assert json.load(f)['step'] == 1


def test_ocr_worker_crash_and_hang_during_an_update(env, tmp_path):
  workdir, marks = str(tmp_path / 'run'), str(tmp_path / 'marks')
  timeout_s = 2.0
  proc = _run(
    env,
    workdir,
    '--config.rl.rewards=ocr',
    '--config.rl.num_updates=1',
    '--config.ocr.num_workers=1',
    f'--config.ocr.timeout_s={timeout_s}',
    '--config.ocr.retries=1',
    fault=f'ocr_crash_hang:{marks}',
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  # Both faults happened, on two different images of the update.
  with (
    open(os.path.join(marks, 'crashed')) as a,
    open(os.path.join(marks, 'hung')) as b,
  ):
    assert a.read() != b.read()
  (record,) = _records(workdir)
  # 4 images: one crashed its worker and was read on the retry; one hung its
  # worker twice (the retry too) and failed; three restarts.
  counters = {
    k: v
    for k, v in record.items()
    if k.startswith('ocr/') and 'second' not in k and 'per_s' not in k
  }
  assert counters['ocr/images'] == 4
  assert counters['ocr/crashes'] == 1
  assert counters['ocr/timeouts'] == 2
  assert counters['ocr/retries'] == 2
  assert counters['ocr/restarts'] == 3
  assert counters['ocr/failures'] == 1
  assert record['time/ocr_wait_s'] >= 2 * timeout_s
  assert os.path.exists(os.path.join(workdir, 'checkpoints', 'final', 'manifest.json'))
  assert _states(workdir) == [1]
