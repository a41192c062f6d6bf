"""`hostenv`: when the command-line entry points re-execute with glibc's malloc
tunables (huge pages; a kept heap on CPU-only hosts), and that they do."""

import os
import subprocess
import sys

from varrl_jax import hostenv

GLIBC = ('glibc', '2.36')
MADVISE = 'always [madvise] never\n'


KEEP = ':'.join(hostenv.keep_heap_tunables(cores=2))


def test_malloc_env_adds_each_tunable_once():
  env = hostenv.malloc_env({'PATH': '/bin'}, GLIBC, MADVISE, cpu_only=True, cores=2)
  assert env['GLIBC_TUNABLES'] == f'glibc.malloc.hugetlb=1:{KEEP}'
  assert env['PATH'] == '/bin'
  # An accelerator host, or an entry point that only compiles (aot), gets
  # huge pages only.
  env = hostenv.malloc_env({}, GLIBC, MADVISE, cpu_only=False)
  assert env['GLIBC_TUNABLES'] == 'glibc.malloc.hugetlb=1'
  env = hostenv.malloc_env({}, GLIBC, MADVISE, cpu_only=True, keep_heap=False, cores=2)
  assert env['GLIBC_TUNABLES'] == 'glibc.malloc.hugetlb=1'
  # Other tunables are kept, and one the user set is not overridden.
  env = hostenv.malloc_env(
    {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'},
    GLIBC,
    MADVISE,
    cpu_only=True,
    cores=2,
  )
  assert env['GLIBC_TUNABLES'].split(':') == [
    'glibc.malloc.arena_max=2',
    'glibc.malloc.hugetlb=1',
    *hostenv.KEEP_HEAP,
  ]
  # Each opt-out drops its part; huge pages need THP enabled.
  for environ, thp, want in (
    ({'VARRL_MALLOC_HUGETLB': '0'}, MADVISE, KEEP),
    ({'VARRL_MALLOC_KEEP': '0'}, MADVISE, 'glibc.malloc.hugetlb=1'),
    ({}, 'always madvise [never]\n', KEEP),
    ({}, '', KEEP),
    ({}, '[always] madvise never', f'glibc.malloc.hugetlb=1:{KEEP}'),
  ):
    got = hostenv.malloc_env(environ, GLIBC, thp, cpu_only=True, cores=2)[
      'GLIBC_TUNABLES'
    ]
    assert got == want, (environ, thp)
  # Nothing to do: already re-executed, all set by the user, both opted out,
  # old or no glibc.
  assert hostenv.malloc_env(env, GLIBC, MADVISE, cpu_only=True, cores=2) is None
  for environ, libc in (
    ({'GLIBC_TUNABLES': f'glibc.malloc.hugetlb=0:{KEEP}'}, GLIBC),
    ({'VARRL_MALLOC_HUGETLB': '0', 'VARRL_MALLOC_KEEP': '0'}, GLIBC),
    ({}, ('glibc', '2.31')),
    ({}, ('', '')),
  ):
    assert hostenv.malloc_env(environ, libc, MADVISE, cpu_only=True, cores=2) is None, (
      environ
    )


def test_one_arena_per_thread_that_runs_xla():
  """The caller and one per core: one arena for all threads serialised malloc
  (the sampler ~10-30% slower, see `hostenv`)."""
  assert hostenv.keep_heap_tunables(cores=2) == (
    'glibc.malloc.arena_max=3',
    'glibc.malloc.mmap_max=0',
    f'glibc.malloc.trim_threshold={64 << 30}',
  )
  assert hostenv.keep_heap_tunables(cores=16)[0] == 'glibc.malloc.arena_max=17'
  cores = len(os.sched_getaffinity(0))
  assert hostenv.keep_heap_tunables()[0] == f'glibc.malloc.arena_max={cores + 1}'


def test_cpu_only_host_follows_jax_platforms():
  assert hostenv.cpu_only_host({'JAX_PLATFORMS': 'cpu'})
  assert not hostenv.cpu_only_host({'JAX_PLATFORMS': 'tpu'})
  assert not hostenv.cpu_only_host({'JAX_PLATFORMS': 'cuda,cpu'})


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
  want = hostenv.malloc_env(env)
  if want is None:  # this host cannot: ran once, as is
    assert lines[1].split() == [pid, 'hello']
  else:  # printed its PID twice (before and after the exec), then ran main
    assert lines[1] == pid
    assert lines[2].split() == [pid, want['GLIBC_TUNABLES'], 'hello']
  off = subprocess.run(
    [sys.executable, str(script), '--word=x'],
    env=dict(env, VARRL_MALLOC_HUGETLB='0', VARRL_MALLOC_KEEP='0'),
    capture_output=True,
    text=True,
  )
  assert off.stdout.split('\n')[1].split() == [off.stdout.split('\n')[0], 'x']
