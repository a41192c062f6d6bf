"""launch/tpu.py: the gcloud commands it builds, dry runs, and a missing gcloud.

Nothing here calls gcloud: dry runs print commands only, and the one real
run is made with a PATH that has no gcloud on it.
"""

import importlib.util
import os
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'launch', 'tpu.py')

# launch/ is a folder of scripts, not a package: load the module by path.
_spec = importlib.util.spec_from_file_location('launch_tpu', SCRIPT)
tpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tpu)

BASE = ['--name=pod', '--zone=us-east5-a', '--project=proj']
UP = [
  'up',
  *BASE,
  '--accelerator-type=v5p-128',
  '--repo-url=https://example.com/varrl_jax.git',
  '--branch=dev',
  '--workdir=gs://bucket/run1',
]
OVERRIDES = ['--config.rl.num_updates=200', '--config.rl.mode=vanilla']


def _cmds(argv):
  args, overrides = tpu.parse_args(argv)
  return tpu.commands_for(args, overrides)


def _script(*argv, path=None):
  env = dict(os.environ)
  if path is not None:
    env['PATH'] = path
  return subprocess.run(
    [sys.executable, SCRIPT, *argv],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
  )


def _fake_gcloud(tmp_path):
  """A PATH whose gcloud only records that it ran: a dry run must not call it."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  marker = tmp_path / 'gcloud_ran'
  gcloud = bin_dir / 'gcloud'
  gcloud.write_text(f'#!/bin/sh\ntouch {shlex.quote(str(marker))}\n')
  gcloud.chmod(0o755)
  return f'{bin_dir}{os.pathsep}{os.environ.get("PATH", "")}', marker


def test_create_plain_vm():
  (cmd,) = _cmds(['create', *BASE, '--accelerator-type=v5p-128', '--spot'])
  assert cmd[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'pod']
  for flag in [
    '--zone=us-east5-a',
    '--project=proj',
    '--accelerator-type=v5p-128',
    '--version=v2-alpha-tpuv5',
    '--spot',
  ]:
    assert flag in cmd


def test_create_preemptible():
  (cmd,) = _cmds(['create', *BASE, '--preemptible'])
  assert '--preemptible' in cmd and '--spot' not in cmd


def test_create_queued_spot():
  (cmd,) = _cmds(['create', *BASE, '--queued', '--spot', '--valid-until-duration=6h'])
  assert cmd[:6] == [
    'gcloud',
    'compute',
    'tpus',
    'queued-resources',
    'create',
    'pod-qr',
  ]
  for flag in [
    '--node-id=pod',
    '--zone=us-east5-a',
    '--accelerator-type=v5p-128',
    '--runtime-version=v2-alpha-tpuv5',
    '--spot',
    '--valid-until-duration=6h',
  ]:
    assert flag in cmd
  assert not any(c.startswith('--version') for c in cmd)


@pytest.mark.parametrize(
  'argv, message',
  [
    (['create', *BASE, '--queued', '--preemptible'], 'no --preemptible; use --spot'),
    (['create', *BASE, '--valid-until-duration=6h'], '--valid-until-duration needs'),
    (['create', *BASE, '--spot', '--preemptible'], '--preemptible: not allowed with'),
    (['setup', *BASE], 'setup needs --repo-url or --tarball'),
    (['train', *BASE], 'train needs --workdir'),
    (['logs', *BASE, '--', '--config.seed=1'], 'after -- are only for train and up'),
  ],
)
def test_bad_flag_combinations_exit_2(argv, message, capsys):
  with pytest.raises(SystemExit) as e:
    tpu.parse_args(argv)
  assert e.value.code == 2
  # argparse's usage line, then one error line naming the flags.
  errors = [ln for ln in capsys.readouterr().err.splitlines() if 'error:' in ln]
  assert len(errors) == 1 and message in errors[0], errors


def test_setup_from_git():
  (cmd,) = _cmds(['setup', *BASE, '--repo-url=https://example.com/r.git'])
  assert cmd[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'pod']
  assert '--worker=all' in cmd
  remote = cmd[-1].removeprefix('--command=')
  assert (
    'git clone --depth=1 --branch main https://example.com/r.git varrl_jax' in remote
  )
  assert "pip install -e '.[ocr,tpu,gcs]'" in remote


def test_setup_from_tarball():
  scp, ssh = _cmds(['setup', *BASE, '--tarball=dist/varrl_jax-0.1.0.tar.gz'])
  assert scp[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp']
  assert 'dist/varrl_jax-0.1.0.tar.gz' in scp and 'pod:varrl_jax.tar.gz' in scp
  assert '--worker=all' in scp and '--worker=all' in ssh
  remote = ssh[-1]
  assert 'tar -xzf varrl_jax.tar.gz -C varrl_jax --strip-components=1' in remote
  assert "pip install -e '.[ocr,tpu,gcs]'" in remote


def test_train_passes_overrides_to_every_worker():
  (cmd,) = _cmds(['train', *BASE, '--workdir=gs://bucket/run1', '--', *OVERRIDES])
  assert '--worker=all' in cmd and '--zone=us-east5-a' in cmd
  remote = cmd[-1].removeprefix('--command=')
  assert (
    'nohup python3 -m varrl_jax.train --config=configs/cvtg.py'
    ' --workdir=gs://bucket/run1 --config.rl.num_updates=200'
    ' --config.rl.mode=vanilla > logs/train-$(hostname).log 2>&1 < /dev/null &'
  ) in remote


def test_train_quotes_overrides_for_the_remote_shell():
  (cmd,) = _cmds(
    ['train', *BASE, '--workdir=gs://b/r', '--', '--config.name=a b; rm -rf ~']
  )
  assert shlex.quote('--config.name=a b; rm -rf ~') in cmd[-1]


def test_logs_and_delete():
  (logs,) = _cmds(['logs', *BASE])
  assert '--worker=0' in logs
  assert logs[-1] == '--command=tail -n 200 -F varrl_jax/logs/train-$(hostname).log'
  (logs3,) = _cmds(['logs', *BASE, '--worker=3'])
  assert '--worker=3' in logs3
  (vm,) = _cmds(['delete', *BASE])
  assert vm[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'pod']
  assert '--quiet' in vm and '--zone=us-east5-a' in vm
  (qr,) = _cmds(['delete', *BASE, '--queued'])
  assert qr[:6] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', 'pod-qr']
  assert '--quiet' in qr and '--force' in qr


def test_up_is_create_setup_train():
  cmds = _cmds([*UP, '--', *OVERRIDES])
  assert [c[3:5] for c in cmds] == [
    ['tpu-vm', 'create'],
    ['tpu-vm', 'ssh'],
    ['tpu-vm', 'ssh'],
  ]
  assert 'git clone --depth=1 --branch dev' in cmds[1][-1]
  assert 'git -C varrl_jax fetch --depth=1 origin dev' in cmds[1][-1]
  assert '--config.rl.num_updates=200' in cmds[2][-1]


def test_up_queued_waits_for_active():
  cmds = _cmds([*UP, '--queued', '--spot'])
  assert [c[3:5] for c in cmds] == [
    ['queued-resources', 'create'],
    ['queued-resources', 'describe'],
    ['tpu-vm', 'ssh'],
    ['tpu-vm', 'ssh'],
  ]
  assert tpu.is_wait_command(cmds[1])
  assert not any(tpu.is_wait_command(c) for c in cmds[2:])


def test_up_dry_run_prints_commands_and_runs_nothing(tmp_path):
  path, marker = _fake_gcloud(tmp_path)
  proc = _script(*UP, '--queued', '--spot', '--dry-run', '--', *OVERRIDES, path=path)
  assert proc.returncode == 0, proc.stderr
  assert not marker.exists()
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 4
  assert all(line.startswith('gcloud compute tpus ') for line in lines)
  assert lines[1].endswith('# repeat until it prints ACTIVE')
  assert '--worker=all' in lines[2] and '--worker=all' in lines[3]
  # Each line is the shell form of the command the pure function builds.
  args, overrides = tpu.parse_args([*UP, '--queued', '--spot', '--', *OVERRIDES])
  expected = [shlex.join(c) for c in tpu.up_commands(args, overrides)]
  assert [line.split('  # ')[0] for line in lines] == expected
  assert shlex.split(lines[3])[-1].startswith('--command=mkdir -p varrl_jax/logs')


@pytest.mark.parametrize(
  'argv',
  [
    ['create', *BASE],
    ['setup', *BASE, '--tarball=x.tar.gz'],
    ['train', *BASE, '--workdir=gs://b/r'],
    ['logs', *BASE],
    ['delete', *BASE, '--queued'],
  ],
)
def test_every_subcommand_dry_runs_without_gcloud(argv):
  proc = _script(*argv, '--dry-run', path='')
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith('gcloud compute tpus ')


def test_missing_gcloud_is_one_error_line(tmp_path):
  proc = _script('delete', *BASE, path=str(tmp_path))
  # A missing tool, not a bad flag: exit 1 (`LaunchError`), as for a gcloud
  # that fails; argparse's bad-flag errors exit 2.
  assert proc.returncode == 1
  assert proc.stdout == ''
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1
  assert lines[0].startswith('error: gcloud not found on PATH')
