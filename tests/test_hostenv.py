"""`hostenv`: when the command-line entry points re-execute with malloc on
transparent huge pages, and that they do."""

import os
import subprocess
import sys

from varrl_jax import hostenv

GLIBC = ('glibc', '2.36')
MADVISE = 'always [madvise] never\n'


def test_huge_page_env_adds_the_tunable_once():
  env = hostenv.huge_page_env({'PATH': '/bin'}, GLIBC, MADVISE)
  assert env['GLIBC_TUNABLES'] == 'glibc.malloc.hugetlb=1'
  assert env['PATH'] == '/bin'
  # Other tunables are kept.
  env = hostenv.huge_page_env(
    {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, GLIBC, MADVISE
  )
  assert env['GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'
  # Nothing to do: already re-executed, set by the user, opted out, old or
  # no glibc, huge pages off or unknown.
  assert hostenv.huge_page_env(env, GLIBC, MADVISE) is None
  for environ, libc, thp in (
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, GLIBC, MADVISE),
    ({'VARRL_MALLOC_HUGETLB': '0'}, GLIBC, MADVISE),
    ({}, ('glibc', '2.31'), MADVISE),
    ({}, ('', ''), MADVISE),
    ({}, GLIBC, 'always madvise [never]\n'),
    ({}, GLIBC, ''),
  ):
    assert hostenv.huge_page_env(environ, libc, thp) is None, (environ, libc, thp)
  assert hostenv.huge_page_env({}, GLIBC, '[always] madvise never')['GLIBC_TUNABLES']


def test_entry_point_reexecutes_with_the_tunable(tmp_path):
  """A CLI (`cli.parse_flags` via app.run) runs under the tunable, in the same
  process, with its flags, when the host can have it."""
  script = tmp_path / 'probe.py'
  script.write_text(
    'import os, sys\n'
    'from absl import app, flags\n'
    'from varrl_jax import cli\n'
    "flags.DEFINE_string('word', '', '')\n"
    'def main(argv):\n'
    "  print(os.getpid(), os.environ.get('GLIBC_TUNABLES', ''), flags.FLAGS.word)\n"
    "if __name__ == '__main__':\n"
    '  print(os.getpid(), flush=True)\n'
    '  app.run(main, flags_parser=cli.parse_flags)\n'
  )
  env = {
    k: v
    for k, v in os.environ.items()
    if k not in ('GLIBC_TUNABLES', 'VARRL_REEXECUTED')
  }
  env['PYTHONPATH'] = os.getcwd()
  out = subprocess.run(
    [sys.executable, str(script), '--word=hello'],
    env=env,
    capture_output=True,
    text=True,
  )
  assert out.returncode == 0, out.stderr
  lines = out.stdout.split('\n')
  pid = lines[0]
  if hostenv.huge_page_env(env) is None:  # this host cannot: ran once, as is
    assert lines[1].split() == [pid, 'hello']
  else:  # printed its PID twice (before and after the exec), then ran main
    assert lines[1] == pid
    assert lines[2].split() == [pid, 'glibc.malloc.hugetlb=1', 'hello']
  off = subprocess.run(
    [sys.executable, str(script), '--word=x'],
    env=dict(env, VARRL_MALLOC_HUGETLB='0'),
    capture_output=True,
    text=True,
  )
  assert off.stdout.split('\n')[1].split() == [off.stdout.split('\n')[0], 'x']
