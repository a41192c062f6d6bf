"""Process settings that must be in place when the interpreter starts.

XLA:CPU allocates each program run's temporaries as one buffer (1.08 GB for
tiny's suffix GRPO step) with malloc and frees it when the run ends. glibc
serves a buffer that large with a fresh ``mmap`` and returns it with
``munmap``, so every run touches new pages that the kernel faults in and
zeroes. Two glibc tunables (``GLIBC_TUNABLES``, glibc >= 2.35) fix that:

- **Huge pages** (``glibc.malloc.hugetlb=1``): malloc asks for transparent
  huge pages on its mappings: tiny's GRPO step went from ~147,000 page faults
  (~570 MiB of 4 KiB pages) to ~800, and from 0.51 to 0.38 s on the
  project's 2-core host. Any host with transparent huge pages.
- **A kept heap** (``glibc.malloc.mmap_max=0``, a 64 GiB
  ``trim_threshold``, and ``arena_max`` = cores + 1): large allocations come
  from heaps that are never given back, so a run reuses the pages of the run
  before: no page faults per step (~1,000 huge-page faults before). The gain
  is largest where programs of different sizes alternate, as the RL loop's
  prefix and suffix updates do: tiny's update cycle (benchmarks/grpo_step.py)
  took 2.0-2.1 s median against 2.38-2.69 s with huge pages alone, and
  VAR-d16's 25-26 s against 33.7 s. The process keeps its peak memory until
  it exits, so this is for CPU-only hosts (the CPU backend's own
  temporaries); hosts with an accelerator device (`_ACCELERATOR_DEVICES`) or
  ``JAX_PLATFORMS`` naming another platform do not get it.
  ``arena_max``: one arena per thread that runs XLA's work (the caller and
  one per core). One arena for all threads (session 16's choice) serialised
  malloc across them: the KV-cached sampler took 0.079-0.093 s per tiny call
  against 0.065-0.083 s (benchmarks/sampling.py), tiny's GRPO programs
  compiled in 9.6 s against 7.9 s, and the README's main command took 68 s
  against 60 s. glibc's default (8 per core) brought back the faults and a
  slower suffix update (1.48 against 1.16-1.21 s median). `varrl_jax.aot`
  only compiles, so it runs without the kept heap
  (``cli.parse_flags(..., keep_heap=False)``).

``GLIBC_TUNABLES`` is read once, when the process starts, so the command-line
entry points (`cli.parse_flags`) execute themselves again, once, with the
tunables added (`reexec_with_malloc_tunables`): same PID, arguments and
environment otherwise. ``VARRL_MALLOC_HUGETLB=0`` and ``VARRL_MALLOC_KEEP=0``
turn each off; a tunable that ``GLIBC_TUNABLES`` already sets is left as it
is. Library use (a notebook, tests importing the package) never re-executes:
there, start the interpreter with the ``GLIBC_TUNABLES`` of `malloc_env`.
"""

from __future__ import annotations

import glob
import os
import platform
import sys

HUGE_PAGES = ('glibc.malloc.hugetlb=1',)
KEEP_HEAP = ('glibc.malloc.mmap_max=0', f'glibc.malloc.trim_threshold={64 << 30}')
OPT_OUT_HUGETLB = 'VARRL_MALLOC_HUGETLB'
OPT_OUT_KEEP = 'VARRL_MALLOC_KEEP'
_MARK = 'VARRL_REEXECUTED'
_THP = '/sys/kernel/mm/transparent_hugepage/enabled'
# TPU VMs (/dev/accel*, /dev/vfio/N) and NVIDIA GPUs.
_ACCELERATOR_DEVICES = ('/dev/accel[0-9]*', '/dev/vfio/[0-9]*', '/dev/nvidia[0-9]*')


def cpu_only_host(environ=None) -> bool:
  """True when JAX will run on the CPU: ``JAX_PLATFORMS`` is 'cpu', or it is
  unset and no accelerator device file exists."""
  environ = os.environ if environ is None else environ
  platforms = environ.get('JAX_PLATFORMS', '').strip().lower()
  if platforms:
    return platforms == 'cpu'
  return not any(glob.glob(pattern) for pattern in _ACCELERATOR_DEVICES)


def keep_heap_tunables(cores: int | None = None) -> tuple[str, ...]:
  """The kept heap's tunables for a host with ``cores`` usable cores
  (default: this process's CPU affinity)."""
  if cores is None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else 0
    cores = cores or os.cpu_count() or 1
  return (f'glibc.malloc.arena_max={cores + 1}', *KEEP_HEAP)


def malloc_env(
  environ=None,
  libc=None,
  thp_mode=None,
  cpu_only=None,
  keep_heap: bool = True,
  cores: int | None = None,
) -> dict | None:
  """The environment to re-execute with, or None when there is nothing to
  add: not Linux/glibc >= 2.35, opted out or already set, already
  re-executed. Huge pages need transparent huge pages enabled; the kept heap
  (`keep_heap_tunables` for ``cores``) ``keep_heap`` (the caller runs
  programs, not only compiles them) and a CPU-only host (`cpu_only_host`)."""
  environ = os.environ if environ is None else environ
  if environ.get(_MARK):
    return None
  name, version = platform.libc_ver() if libc is None else libc
  try:
    if name != 'glibc' or tuple(int(v) for v in version.split('.')[:2]) < (2, 35):
      return None
  except ValueError:
    return None
  tunables = environ.get('GLIBC_TUNABLES', '')
  add = []
  if environ.get(OPT_OUT_HUGETLB, '1') != '0':
    if thp_mode is None:
      try:
        with open(_THP) as f:
          thp_mode = f.read()
      except OSError:
        thp_mode = ''
    if '[never]' not in thp_mode and '[' in thp_mode:
      add += HUGE_PAGES
  if keep_heap and environ.get(OPT_OUT_KEEP, '1') != '0':
    if cpu_only_host(environ) if cpu_only is None else cpu_only:
      add += keep_heap_tunables(cores)
  set_keys = {t.split('=')[0] for t in tunables.split(':') if t}
  add = [t for t in add if t.split('=')[0] not in set_keys]
  if not add:
    return None
  return dict(
    environ,
    GLIBC_TUNABLES=':'.join([tunables, *add] if tunables else add),
    **{_MARK: '1'},
  )


def reexec_with_malloc_tunables(keep_heap: bool = True) -> None:
  """Replaces this process with itself under `malloc_env` (see the module
  docstring); returns without doing anything when that is None."""
  argv = getattr(sys, 'orig_argv', None)
  linux = sys.platform.startswith('linux') and argv
  env = malloc_env(keep_heap=keep_heap) if linux else None
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]], env)
