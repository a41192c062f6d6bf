"""Process settings that must be in place when the interpreter starts.

glibc's malloc serves every large buffer (XLA:CPU's temporaries of each
program run, among them) with a fresh ``mmap`` and returns it with
``munmap``, so each run touches new pages that the kernel faults in and
zeroes one 4 KiB page at a time: tiny's GRPO step took about 147,000 page
faults (~570 MiB) per call. With the glibc tunable
``glibc.malloc.hugetlb=1`` (glibc >= 2.35) malloc asks for transparent huge
pages on those mappings: about 800 faults, and the step went from 0.51 to
0.38 s on the project's 2-core host (benchmarks/grpo_step.py: the whole RL
update 1.05 -> 0.81 s, the 2048^3 matmul 420 -> 499 GFLOP/s best).

``GLIBC_TUNABLES`` is read once, when the process starts, so the command-line
entry points (`cli.parse_flags`) execute themselves again, once, with it
added (`reexec_with_huge_pages`): same PID, arguments and environment
otherwise. ``VARRL_MALLOC_HUGETLB=0`` turns this off; a ``GLIBC_TUNABLES``
that already sets ``glibc.malloc.hugetlb`` is left as it is. Library use (a
notebook, tests importing the package) never re-executes: there, start the
interpreter with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` to get the same.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = 'glibc.malloc.hugetlb=1'
OPT_OUT = 'VARRL_MALLOC_HUGETLB'
_MARK = 'VARRL_REEXECUTED'
_THP = '/sys/kernel/mm/transparent_hugepage/enabled'


def huge_page_env(environ=None, libc=None, thp_mode=None) -> dict | None:
  """The environment to re-execute with, or None when there is nothing to do:
  not Linux/glibc >= 2.35, transparent huge pages off, opted out, already
  set, or already re-executed."""
  environ = os.environ if environ is None else environ
  if environ.get(OPT_OUT, '1') == '0' or environ.get(_MARK):
    return None
  tunables = environ.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.hugetlb' in tunables:
    return None
  name, version = platform.libc_ver() if libc is None else libc
  try:
    if name != 'glibc' or tuple(int(v) for v in version.split('.')[:2]) < (2, 35):
      return None
  except ValueError:
    return None
  if thp_mode is None:
    try:
      with open(_THP) as f:
        thp_mode = f.read()
    except OSError:
      return None
  if '[never]' in thp_mode or '[' not in thp_mode:
    return None
  return dict(
    environ,
    GLIBC_TUNABLES=f'{tunables}:{TUNABLE}' if tunables else TUNABLE,
    **{_MARK: '1'},
  )


def reexec_with_huge_pages() -> None:
  """Replaces this process with itself under `huge_page_env` (see the module
  docstring); returns without doing anything when that is None."""
  argv = getattr(sys, 'orig_argv', None)
  env = huge_page_env() if sys.platform.startswith('linux') and argv else None
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]], env)
