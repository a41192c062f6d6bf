"""Command-line plumbing shared by the entry points: flag parsing with one-line errors.

absl + ml_collections report a mistyped ``--config.some.key=...`` as a
traceback. Researchers should instead see one line that names the key and
the closest existing ones.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
import traceback

from absl import flags


class ConfigKeyError(ValueError):
  """An override names a key that the config does not declare."""


def load_config_file(path: str, arg: str | None = None):
  """``get_config(arg)`` of the config file at ``path``; a key the file sets
  that the base config does not declare (the base config is locked) is a
  ConfigKeyError naming the file, the line and the closest keys."""
  spec = importlib.util.spec_from_file_location('_varrl_config', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg is not None else module.get_config()
  except AttributeError as e:
    message = str(e)
    if 'cannot be added since the config is locked' not in message:
      raise
    key = message.split('"')[1] if '"' in message else '?'
    where, line = path, ''
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
      if os.path.abspath(frame.filename) == os.path.abspath(path):
        where, line = f'{path}:{frame.lineno}: {frame.line}', frame.line or ''
        break
    # The dotted key as the file wrote it (`c.rl.panw.apha = ...`), if visible.
    chain = re.search(rf'\w+((?:\.\w+)*\.{re.escape(key)})\s*=', line)
    if chain:
      key = chain.group(1)[1:]
    keys = _all_keys(_base_config())
    if '.' in key:
      close = difflib.get_close_matches(key, keys, n=3)
    else:
      leaves = {k.rsplit('.', 1)[-1] for k in keys}
      near = difflib.get_close_matches(key, sorted(leaves), n=3)
      close = [k for k in keys if k.rsplit('.', 1)[-1] in near][:3]
    hint = f'; did you mean {", ".join(close)}?' if close else ''
    raise ConfigKeyError(
      f'unknown config key {key!r} set in {where} (config files change the '
      f'keys of varrl_jax/config.py, never add them){hint}'
    ) from None


def _base_config():
  from varrl_jax.config import base_config

  return base_config()


def _all_keys(config, prefix='') -> list[str]:
  keys = []
  for k, v in config.items():
    name = f'{prefix}{k}'
    keys.append(name)
    if hasattr(v, 'items'):
      keys.extend(_all_keys(v, name + '.'))
  return keys


def check_overrides(argv: list[str], flag_name: str = 'config') -> None:
  """Raises ConfigKeyError for the first ``--config.KEY`` that the file lacks."""
  path = arg_text = None
  for arg in argv:
    if arg.startswith(f'--{flag_name}='):
      path, _, arg_text = arg.split('=', 1)[1].partition(':')
  if path is None:
    return
  if not os.path.exists(path):
    raise ConfigKeyError(f'--{flag_name}={path}: no such config file')
  keys = _all_keys(load_config_file(path, arg_text or None))
  for arg in argv:
    if arg.startswith(f'--{flag_name}.'):
      key = arg[len(flag_name) + 3 :].split('=', 1)[0]
      if key not in keys:
        close = difflib.get_close_matches(key, keys, n=3)
        hint = f'; did you mean {", ".join(close)}?' if close else ''
        raise ConfigKeyError(f'unknown config key {key!r} in {arg} ({path}){hint}')


def parse_flags(argv: list[str], keep_heap: bool = True) -> list[str]:
  """absl flags parser for ``app.run(main, flags_parser=parse_flags)``.

  When ``argv`` is the process's own command line, first re-executes the
  process once with glibc's malloc on transparent huge pages and, on a
  CPU-only host and unless ``keep_heap`` is False (an entry point that only
  compiles), on a kept heap (`hostenv`; ``VARRL_MALLOC_HUGETLB=0`` and
  ``VARRL_MALLOC_KEEP=0`` turn them off)."""
  if list(argv) == sys.argv:
    from varrl_jax import hostenv

    hostenv.reexec_with_malloc_tunables(keep_heap)
  try:
    check_overrides(argv)
    rest = flags.FLAGS(argv)
    # Orbax and JAX log every checkpoint and compile at INFO; researchers see
    # warnings unless they ask for more with --verbosity=0.
    if not flags.FLAGS['verbosity'].present:
      from absl import logging

      logging.set_verbosity(logging.WARNING)
    return rest
  except ConfigKeyError as e:
    print(f'error: {e}', file=sys.stderr)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    print(f'error: bad command-line flag: {e}', file=sys.stderr)
  sys.exit(2)


def setup_compilation_cache(config) -> str:
  """Turns on JAX's persistent compilation cache at ``config.compilation_cache_dir``.

  Call before the first compile. Returns the directory ('' = left off).
  """
  path = config.get('compilation_cache_dir', '')
  if not path:
    return ''
  if '://' not in path:
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(path, exist_ok=True)
  import jax

  jax.config.update('jax_compilation_cache_dir', path)
  return path


def user_error_types() -> tuple[type[BaseException], ...]:
  """Exceptions that mean bad input, not a bug: reported as one line."""
  from varrl_jax.checkpoint import CheckpointError
  from varrl_jax.data.cvtg import DatasetError
  from varrl_jax.models.schedule import ScheduleError
  from varrl_jax.models.text import PromptError
  from varrl_jax.rewards.ocr import OcrUnavailableError

  return (
    DatasetError,
    PromptError,
    ScheduleError,
    OcrUnavailableError,
    CheckpointError,
    FloatingPointError,  # NaN/inf stops (after saving a checkpoint)
    ValueError,
  )


def run_reporting_errors(fn, *args, **kwargs):
  """Calls ``fn``; bad input exits with code 2 and one ``error:`` line."""
  try:
    return fn(*args, **kwargs)
  except user_error_types() as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
