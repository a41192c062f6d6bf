"""Readers of finite prompt lists for ``config.rl.prompts`` (`prompt_sources`).

Each returns a `PromptList`: every record read and checked up front (before
anything compiles), in the storage order; a bad record raises ValueError
with one line naming where it is and which field is wrong.

- `read_jsonl`: one JSON object a line, ``{"prompt": str, "targets": [str,
  ...]}``; ``targets`` may be left out (or null) for rewards that need none;
  other fields are ignored; blank lines are skipped. Errors name
  ``PATH:LINE: field 'targets': ...``. Local paths and gs:// (`varrl_jax.fs`).
- `read_cvtg`: a local CVTG-2K copy (`data.cvtg`), both subsets, 2-5 regions.
- `read_tfds`: a TFDS dataset with a text feature ``prompt`` and an optional
  sequence-of-text feature ``targets`` (e.g. our ``cvtg2k``,
  `data.cvtg_tfds`), read with ``tfds.data_source`` (array_record; no
  TensorFlow).
"""

from __future__ import annotations

import dataclasses
import json

from varrl_jax import fs

Prompt = tuple[str, tuple[str, ...]]  # (prompt, targets)

_JSON_TYPES = {
  dict: 'object',
  list: 'array',
  str: 'string',
  int: 'number',
  float: 'number',
  bool: 'boolean',
  type(None): 'null',
}


@dataclasses.dataclass(frozen=True, eq=False)
class PromptList:
  """Records in storage order; ``untargeted``: where the first record without
  targets is ('' when every record has some)."""

  items: tuple[Prompt, ...]
  untargeted: str = ''


def _kind(value: object) -> str:
  return _JSON_TYPES.get(type(value), type(value).__name__)


def _check_targets(value: object) -> tuple[str, ...]:
  """Targets of one record; ValueError ``field 'targets'...: why`` otherwise."""
  if value is None:
    return ()
  if not isinstance(value, list):
    raise ValueError(
      f"field 'targets': expected an array of strings, got {_kind(value)}"
    )
  for j, t in enumerate(value):
    if not isinstance(t, str):
      raise ValueError(f"field 'targets'[{j}]: expected a string, got {_kind(t)}")
    if not t.strip():
      raise ValueError(f"field 'targets'[{j}]: empty string")
    _check_utf8(t, f"field 'targets'[{j}]")
  return tuple(value)


def _check_utf8(text: str, field: str) -> None:
  # JSON allows lone surrogates ("\ud800"), which no encoder can take.
  try:
    text.encode('utf-8')
  except UnicodeEncodeError:
    raise ValueError(f'{field}: not valid text (a lone UTF-16 surrogate)') from None


def _check_prompt(value: object) -> str:
  if not isinstance(value, str):
    raise ValueError(f"field 'prompt': expected a string, got {_kind(value)}")
  if not value.strip():
    raise ValueError("field 'prompt': empty string")
  _check_utf8(value, "field 'prompt'")
  return value


def parse_jsonl(text: str, name: str) -> PromptList:
  """The records of JSONL ``text`` (module docstring); ``name`` starts errors."""
  items: list[Prompt] = []
  untargeted = ''
  # '\n' only: str.splitlines would also split at U+2028 inside a string.
  for number, line in enumerate(text.removeprefix('\ufeff').split('\n'), 1):
    if not line.strip():
      continue
    where = f'{name}:{number}'
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f'{where}: invalid JSON: {e.msg} (column {e.colno})') from None
    if not isinstance(record, dict):
      raise ValueError(
        f"{where}: expected a JSON object with a 'prompt' field, got {_kind(record)}"
      )
    if 'prompt' not in record:
      raise ValueError(f"{where}: field 'prompt': missing")
    try:
      prompt = _check_prompt(record['prompt'])
      targets = _check_targets(record.get('targets'))
    except ValueError as e:
      raise ValueError(f'{where}: {e}') from None
    if not targets and not untargeted:
      untargeted = where
    items.append((prompt, targets))
  if not items:
    raise ValueError(f'{name}: no prompts (the file is empty)')
  return PromptList(tuple(items), untargeted)


def read_jsonl(path: str) -> PromptList:
  """`parse_jsonl` of the file at ``path`` (local or gs://)."""
  try:
    text = fs.read_text(path)
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f'cannot read {path}: {e}') from None
  return parse_jsonl(text, path)


def read_cvtg(root: str, target_source: str = 'sentences') -> PromptList:
  """CVTG-2K at ``root``; targets per ``target_source`` (config.eval.cvtg_targets)."""
  from varrl_jax.data import cvtg

  try:
    examples = cvtg.load_cvtg(root, target_source=target_source)
  except cvtg.DatasetError as e:
    raise ValueError(str(e)) from None
  return PromptList(tuple((e.prompt, tuple(e.targets)) for e in examples))


def _text(value: object) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def parse_tfds_spec(body: str) -> tuple[str, str, str | None]:
  """``NAME[,split=S][,data_dir=D]`` -> (name, split, data_dir); split 'train'."""
  name, *options = [x.strip() for x in body.split(',')]
  split, data_dir = 'train', None
  for option in options:
    key, eq, value = option.partition('=')
    if not eq or key not in ('split', 'data_dir') or not value:
      raise ValueError(
        f'{option!r}: expected split=SPLIT or data_dir=DIR after the dataset name'
      )
    if key == 'split':
      split = value
    else:
      data_dir = value
  if not name:
    raise ValueError('no dataset name (tfds:NAME[,split=SPLIT][,data_dir=DIR])')
  return name, split, data_dir


def read_tfds(
  name: str, split: str = 'train', data_dir: str | None = None
) -> PromptList:
  """Every record of a TFDS split (module docstring), in storage order."""
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise ValueError(
      'tfds sources need the optional extra "tfds" (tensorflow-datasets, array_record)'
    ) from None
  if name.split(':')[0].split('/')[0] == 'cvtg2k':
    from varrl_jax.data import cvtg_tfds  # noqa: F401  (registers the builder)
  try:
    # Never download or prepare at run time: a dataset not in data_dir is an
    # error (below), not a download inside a training job.
    source = tfds.data_source(
      name, split=split, data_dir=data_dir, download=False, try_gcs=False
    )
    n = len(source)
  except Exception as e:  # noqa: BLE001  (tfds raises many types; one line out)
    first = str(e).strip().split('\n')[0]
    raise ValueError(
      f'cannot open TFDS {name!r} split {split!r} (data_dir {data_dir}): '
      f'{type(e).__name__}: {first}'
    ) from None
  items: list[Prompt] = []
  untargeted = ''
  for i in range(n):
    record = source[i]
    where = f'{name}[{split}] record {i}'
    if 'prompt' not in record:
      raise ValueError(f"{where}: field 'prompt': missing (features: {sorted(record)})")
    try:
      prompt = _check_prompt(_text(record['prompt']))
      raw = record.get('targets')
      targets = _check_targets(None if raw is None else [_text(t) for t in raw])
    except ValueError as e:
      raise ValueError(f'{where}: {e}') from None
    if not targets and not untargeted:
      untargeted = where
    items.append((prompt, targets))
  if not items:
    raise ValueError(f'{name}[{split}]: no records')
  return PromptList(tuple(items), untargeted)
