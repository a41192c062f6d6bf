r"""Create a Cloud TPU VM, install varrl_jax on every worker, train, tail, delete.

  python launch/tpu.py up --name=varrl --zone=us-east5-a \
      --accelerator-type=v5p-128 --repo-url=https://github.com/ORG/varrl_jax \
      --workdir=gs://BUCKET/runs/cvtg -- --config.rl.num_updates=200
  python launch/tpu.py logs --name=varrl --zone=us-east5-a
  python launch/tpu.py delete --name=varrl --zone=us-east5-a

Subcommands: ``create``, ``setup``, ``train``, ``logs``, ``delete`` and
``up`` (create + setup + train). Every one takes ``--dry-run``, which prints
the gcloud commands one per line and runs nothing. Arguments after ``--`` are
passed to ``varrl_jax.train`` unchanged (``--config.x=y`` overrides).

Only the standard library is used, so the script runs from any machine with
gcloud, without installing the project (or JAX) there. Each subcommand's
commands come from a pure ``*_commands(args) -> list[list[str]]`` function;
``main`` only prints or runs them.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

GCLOUD = 'gcloud'
EXTRAS = '.[ocr,tpu,gcs]'
TARBALL_REMOTE = 'varrl_jax.tar.gz'
# A queued resource is provisioned asynchronously; these states never become
# ACTIVE, so polling stops on them instead of waiting forever.
QR_FAILED_STATES = ('FAILED', 'SUSPENDED', 'SUSPENDING', 'DELETING')
QR_POLL_SECONDS = 30


class LaunchError(Exception):
  """A problem reported to the user as one ``error:`` line."""


# --- command builders (pure) ----------------------------------------------


def _scope(args: argparse.Namespace) -> list[str]:
  """Flags every gcloud command shares: the zone and, if given, the project."""
  flags = [f'--zone={args.zone}']
  if args.project:
    flags.append(f'--project={args.project}')
  return flags


def _qr_name(args: argparse.Namespace) -> str:
  return args.qr_name or f'{args.name}-qr'


def _ssh(args: argparse.Namespace, worker: str, command: str) -> list[str]:
  return [
    GCLOUD,
    'compute',
    'tpus',
    'tpu-vm',
    'ssh',
    args.name,
    *_scope(args),
    f'--worker={worker}',
    f'--command={command}',
  ]


def _log_file(args: argparse.Namespace) -> str:
  """The log path on a worker, relative to its home directory.

  Each worker writes its own file on its own disk; the hostname in the name
  keeps the files apart should the home directory ever be shared.
  ``$(hostname)`` is left unquoted so the worker's shell expands it.
  """
  return f'{shlex.quote(args.remote_dir)}/logs/train-$(hostname).log'


def create_commands(args: argparse.Namespace) -> list[list[str]]:
  """``tpu-vm create`` (blocks until READY) or ``queued-resources create``."""
  if args.queued:
    cmd = [
      GCLOUD,
      'compute',
      'tpus',
      'queued-resources',
      'create',
      _qr_name(args),
      f'--node-id={args.name}',
      *_scope(args),
      f'--accelerator-type={args.accelerator_type}',
      f'--runtime-version={args.version}',
    ]
    if args.spot:
      cmd.append('--spot')
    if args.valid_until_duration:
      cmd.append(f'--valid-until-duration={args.valid_until_duration}')
    return [cmd]
  cmd = [
    GCLOUD,
    'compute',
    'tpus',
    'tpu-vm',
    'create',
    args.name,
    *_scope(args),
    f'--accelerator-type={args.accelerator_type}',
    f'--version={args.version}',
  ]
  if args.spot:
    cmd.append('--spot')
  if args.preemptible:
    cmd.append('--preemptible')
  return [cmd]


def wait_command(args: argparse.Namespace) -> list[str]:
  """Prints the queued resource's state; run until it says ACTIVE."""
  return [
    GCLOUD,
    'compute',
    'tpus',
    'queued-resources',
    'describe',
    _qr_name(args),
    *_scope(args),
    '--format=value(state.state)',
  ]


def is_wait_command(cmd: Sequence[str]) -> bool:
  return list(cmd[1:5]) == ['compute', 'tpus', 'queued-resources', 'describe']


def setup_commands(args: argparse.Namespace) -> list[list[str]]:
  """Puts the code in ``--remote-dir`` on every worker and pip-installs it.

  From git (``--repo-url``, ``--branch``; a re-run fetches and checks out the
  branch again) or from a local tarball (``--tarball``, copied with scp and
  unpacked in place of the old tree). Its top folder is stripped, as in an
  sdist or ``git archive --prefix=varrl_jax/``.
  """
  remote = shlex.quote(args.remote_dir)
  cmds = []
  if args.repo_url:
    url, branch = shlex.quote(args.repo_url), shlex.quote(args.branch)
    fetch = (
      f'if [ -d {remote}/.git ]; then'
      f' git -C {remote} fetch --depth=1 origin {branch}'
      f' && git -C {remote} checkout --force FETCH_HEAD;'
      f' else git clone --depth=1 --branch {branch} {url} {remote}; fi'
    )
  elif args.tarball:
    cmds.append(
      [
        GCLOUD,
        'compute',
        'tpus',
        'tpu-vm',
        'scp',
        args.tarball,
        f'{args.name}:{TARBALL_REMOTE}',
        *_scope(args),
        '--worker=all',
      ]
    )
    fetch = (
      f'rm -rf {remote} && mkdir -p {remote}'
      f' && tar -xzf {TARBALL_REMOTE} -C {remote} --strip-components=1'
    )
  else:
    raise LaunchError('setup needs --repo-url or --tarball')
  # pip first: the TPU images ship a pip too old for editable installs of a
  # pyproject build (PEP 660).
  install = (
    f'cd {remote} && python3 -m pip install --upgrade pip'
    f' && python3 -m pip install -e {shlex.quote(EXTRAS)}'
  )
  cmds.append(_ssh(args, 'all', f'set -e; {fetch}; {install}'))
  return cmds


def train_command_line(args: argparse.Namespace, overrides: Sequence[str]) -> str:
  """The ``python -m varrl_jax.train ...`` line every worker runs."""
  return shlex.join(
    [
      'python3',
      '-m',
      'varrl_jax.train',
      f'--config={args.config}',
      f'--workdir={args.workdir}',
      *overrides,
    ]
  )


def train_commands(
  args: argparse.Namespace, overrides: Sequence[str] = ()
) -> list[list[str]]:
  """Starts training on all workers at once, detached, one log per worker.

  All workers must start together: the pod's processes wait for each other
  when JAX initialises. ``nohup``, ``< /dev/null`` and ``&`` let ssh return
  while training goes on after the connection closes.
  """
  if not args.workdir:
    raise LaunchError('train needs --workdir (a gs://BUCKET/PATH is recommended)')
  remote = shlex.quote(args.remote_dir)
  line = train_command_line(args, overrides)
  command = (
    f'mkdir -p {remote}/logs && cd {remote}'
    f' && nohup {line} > logs/train-$(hostname).log 2>&1 < /dev/null &'
  )
  return [_ssh(args, 'all', command)]


def logs_commands(args: argparse.Namespace) -> list[list[str]]:
  """Follows one worker's log (worker 0 by default: it writes the metrics)."""
  return [_ssh(args, str(args.worker), f'tail -n 200 -F {_log_file(args)}')]


def delete_commands(args: argparse.Namespace) -> list[list[str]]:
  """Deletes the VM or, with ``--queued``, the queued resource and its node."""
  if args.queued:
    return [
      [
        GCLOUD,
        'compute',
        'tpus',
        'queued-resources',
        'delete',
        _qr_name(args),
        *_scope(args),
        '--force',
        '--quiet',
      ]
    ]
  return [
    [GCLOUD, 'compute', 'tpus', 'tpu-vm', 'delete', args.name, *_scope(args), '--quiet']
  ]


def up_commands(
  args: argparse.Namespace, overrides: Sequence[str] = ()
) -> list[list[str]]:
  """create, (wait for a queued resource to be ACTIVE), setup, train."""
  cmds = create_commands(args)
  if args.queued:
    cmds.append(wait_command(args))
  return cmds + setup_commands(args) + train_commands(args, overrides)


def commands_for(
  args: argparse.Namespace, overrides: Sequence[str] = ()
) -> list[list[str]]:
  builders: dict[str, Callable[[], list[list[str]]]] = {
    'create': lambda: create_commands(args),
    'setup': lambda: setup_commands(args),
    'train': lambda: train_commands(args, overrides),
    'logs': lambda: logs_commands(args),
    'delete': lambda: delete_commands(args),
    'up': lambda: up_commands(args, overrides),
  }
  return builders[args.command]()


# --- command line ------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument('--name', default='varrl', help='TPU VM (node) name.')
  common.add_argument('--zone', required=True, help='e.g. us-east5-a for v5p.')
  common.add_argument('--project', default=None, help='Default: gcloud config.')
  common.add_argument(
    '--dry-run', action='store_true', help='Print the gcloud commands, run nothing.'
  )
  common.add_argument(
    '--remote-dir',
    default='varrl_jax',
    help='Checkout on each worker, relative to the home directory.',
  )

  queued = argparse.ArgumentParser(add_help=False)
  queued.add_argument(
    '--queued', action='store_true', help='Use a queued resource, not a plain VM.'
  )
  queued.add_argument('--qr-name', default=None, help='Default: NAME-qr.')

  create = argparse.ArgumentParser(add_help=False)
  create.add_argument('--accelerator-type', default='v5p-128')
  create.add_argument(
    '--version', default='v2-alpha-tpuv5', help='TPU software (runtime) version.'
  )
  kind = create.add_mutually_exclusive_group()
  kind.add_argument('--spot', action='store_true')
  kind.add_argument('--preemptible', action='store_true', help='Not with --queued.')
  create.add_argument(
    '--valid-until-duration',
    default=None,
    help='Queued only: give up if not provisioned within this, e.g. 6h.',
  )

  setup = argparse.ArgumentParser(add_help=False)
  source = setup.add_mutually_exclusive_group()
  source.add_argument('--repo-url', default=None, help='git URL every worker clones.')
  source.add_argument(
    '--tarball', default=None, help='Local .tar.gz (sdist or git archive) to copy.'
  )
  setup.add_argument('--branch', default='main')

  train = argparse.ArgumentParser(add_help=False)
  train.add_argument('--config', default='configs/cvtg.py')
  train.add_argument(
    '--workdir', default=None, help='Run outputs; gs://BUCKET/PATH recommended.'
  )

  logs = argparse.ArgumentParser(add_help=False)
  logs.add_argument('--worker', type=int, default=0)

  parser = argparse.ArgumentParser(
    prog='launch/tpu.py',
    description=__doc__.split('\n\n')[0].strip().splitlines()[0],
    epilog='Arguments after -- go to varrl_jax.train (train and up only).',
  )
  sub = parser.add_subparsers(dest='command', required=True)
  for name, parents, help_ in [
    ('create', [common, queued, create], 'Create the TPU VM or queued resource.'),
    ('setup', [common, setup], 'Install the project on all workers.'),
    ('train', [common, train], 'Start training on all workers (detached).'),
    ('logs', [common, logs], "Follow a worker's training log."),
    ('delete', [common, queued], 'Delete the VM or queued resource.'),
    ('up', [common, queued, create, setup, train], 'create + setup + train.'),
  ]:
    sub.add_parser(name, parents=parents, help=help_, description=help_)
  return parser


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  """Returns (args, train overrides); the overrides are everything after --."""
  argv = list(argv)
  overrides: list[str] = []
  if '--' in argv:
    i = argv.index('--')
    argv, overrides = argv[:i], argv[i + 1 :]
  parser = _parser()
  args = parser.parse_args(argv)
  if overrides and args.command not in ('train', 'up'):
    parser.error(f'arguments after -- are only for train and up, not {args.command}')
  if getattr(args, 'queued', False) and getattr(args, 'preemptible', False):
    parser.error('queued resources have no --preemptible; use --spot')
  if getattr(args, 'valid_until_duration', None) and not args.queued:
    parser.error('--valid-until-duration needs --queued')
  if args.command in ('setup', 'up') and not (args.repo_url or args.tarball):
    parser.error(f'{args.command} needs --repo-url or --tarball')
  if args.command in ('train', 'up') and not args.workdir:
    parser.error(f'{args.command} needs --workdir (gs://BUCKET/PATH recommended)')
  return args, overrides


def _wait_active(cmd: list[str]) -> None:
  """Polls the queued resource until ACTIVE; raises on a state that never is."""
  last = None
  while True:
    state = subprocess.run(cmd, check=True, capture_output=True, text=True)
    state = state.stdout.strip()
    if state != last:
      print(f'queued resource: {state or "(no state yet)"}', flush=True)
      last = state
    if state == 'ACTIVE':
      return
    if state in QR_FAILED_STATES:
      raise LaunchError(f'queued resource is {state}; see: {shlex.join(cmd[:-1])}')
    time.sleep(QR_POLL_SECONDS)


def run(cmds: list[list[str]]) -> None:
  if shutil.which(GCLOUD) is None:
    raise LaunchError(
      'gcloud not found on PATH; install the Google Cloud SDK '
      '(https://cloud.google.com/sdk/docs/install) or use --dry-run'
    )
  for cmd in cmds:
    print(f'+ {shlex.join(cmd)}', flush=True)
    if is_wait_command(cmd):
      _wait_active(cmd)
    else:
      subprocess.run(cmd, check=True)


def main(argv: Sequence[str] | None = None) -> int:
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    cmds = commands_for(args, overrides)
    if args.dry_run:
      for cmd in cmds:
        suffix = '  # repeat until it prints ACTIVE' if is_wait_command(cmd) else ''
        print(shlex.join(cmd) + suffix)
      return 0
    run(cmds)
  except LaunchError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  except subprocess.CalledProcessError as e:
    print(f'error: exit {e.returncode} from: {shlex.join(e.cmd)}', file=sys.stderr)
    return e.returncode or 1
  except KeyboardInterrupt:
    # logs' tail -F ends this way; the run on the pod is unaffected.
    return 130
  return 0


if __name__ == '__main__':
  sys.exit(main())
