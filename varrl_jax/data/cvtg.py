"""Reader for a local copy of the CVTG-2K benchmark (TextCrafter, arXiv 2503.23461).

Nothing is downloaded: unzip ``CVTG-2K.zip`` of the official release and pass
the folder that holds the two subsets::

  ROOT/CVTG/{2,3,4,5}.json
  ROOT/CVTG-Style/{2,3,4,5}.json     (the zip may spell it CVTG-style: both work)

The number in a file name is the number of text regions of its prompts. Each
file is ``{"data_list": [{"index", "prompt", "carrier_list", "sentence_list"},
…]}``; other keys are ignored, and so are the ``N_combined.json`` files.

Targets. The official CVTG-2K scorer takes the ground-truth text of an image
from its prompt: every span between single quotes (``'(.*?)'``), split into
words. DESIGN.md and the project's issue define the targets as the
``sentence_list`` strings: ``target_source='sentences'`` (default) takes each
entry whole, or, when an entry is a description that quotes its text
(``a glass with 'Crime Scene' in bold``), the quoted spans — a quote counts
only at a word boundary, so apostrophes (``Joe's Mom's``) never split an
entry. ``target_source='prompt'`` reproduces the official scorer exactly
(every ``'(.*?)'`` span of the prompt; an apostrophe inside a text, as in
``'Joe's Diner'``, cuts the span there for the official scorer too).
Either way an entry with no target is malformed.

Errors. Any malformed file raises :class:`DatasetError` with a one-line
message naming the file relative to the root (``CVTG/3.json``) and, for a
bad entry, its position in ``data_list`` and its ``index``. A missing root,
subset folder or file raises :class:`DatasetMissingError` (also a
``FileNotFoundError``) whose message gives the expected layout.

Order. Subsets in the order ``CVTG``, ``CVTG-Style``; region counts ascending;
entries by ``index`` — independent of the order inside the files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Literal

SUBSETS = ('CVTG', 'CVTG-Style')
REGION_COUNTS = (2, 3, 4, 5)
TargetSource = Literal['prompt', 'sentences']

LAYOUT = (
  'expected ROOT/CVTG/{2,3,4,5}.json and ROOT/CVTG-Style/{2,3,4,5}.json, '
  'as unzipped from CVTG-2K.zip of the official CVTG-2K release '
  '(pass ROOT, the folder holding CVTG/ and CVTG-Style/)'
)

# The official scorer's pattern (non-greedy, single quotes only).
_QUOTED = re.compile(r"'(.*?)'", re.DOTALL)
# Quotes at word boundaries only, for sentence_list entries.
_QUOTED_WORDS = re.compile(r"(?<![A-Za-z0-9])'(.+?)'(?![A-Za-z0-9])", re.DOTALL)


class DatasetError(Exception):
  """A CVTG-2K file is missing or malformed; the message is one line."""


class DatasetMissingError(DatasetError, FileNotFoundError):
  """The root, a subset folder or a file is missing; the message gives the layout."""


@dataclasses.dataclass(frozen=True)
class CvtgExample:
  """One CVTG-2K prompt.

  ``targets`` are the texts to render (see the module docstring);
  ``sentences`` is the raw ``sentence_list`` and ``carriers`` the raw
  ``carrier_list``.
  """

  subset: str
  regions: int
  index: int
  prompt: str
  carriers: tuple[str, ...]
  targets: tuple[str, ...]
  sentences: tuple[str, ...] = ()

  @property
  def key(self) -> str:
    """Unique id, ``'{subset}/{regions}/{index}'`` (also a natural image path)."""
    return f'{self.subset}/{self.regions}/{self.index}'


def quoted_texts(text: str, word_boundary: bool = False) -> list[str]:
  """Stripped, non-empty spans between single quotes, in order."""
  pattern = _QUOTED_WORDS if word_boundary else _QUOTED
  return [m.strip() for m in pattern.findall(text) if m.strip()]


def _subset_dir(root: str, subset: str) -> str:
  exact = os.path.join(root, subset)
  if os.path.isdir(exact):
    return subset
  # The release's README spells the styled subset 'CVTG-style'.
  for name in sorted(os.listdir(root)):
    if name.lower() == subset.lower() and os.path.isdir(os.path.join(root, name)):
      return name
  raise DatasetMissingError(
    f'CVTG-2K subset folder {subset}/ not found in {root}: {LAYOUT}'
  )


def _read_json(path: str, rel: str) -> object:
  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except FileNotFoundError:
    raise DatasetMissingError(f'CVTG-2K file {rel} not found: {LAYOUT}') from None
  try:
    text = raw.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    raise DatasetError(f'{rel}: not valid UTF-8 at byte {e.start}') from None
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise DatasetError(
      f'{rel}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}'
    ) from None


def _string_list(value: object, field: str, allow_empty_list: bool) -> tuple[str, ...]:
  """Validates a list of non-empty strings; returns it or raises ValueError."""
  if not isinstance(value, list):
    raise ValueError(f'{field!r} must be a list of strings, got {type(value).__name__}')
  if not value and not allow_empty_list:
    raise ValueError(f'{field!r} is empty')
  for j, item in enumerate(value):
    if not isinstance(item, str):
      raise ValueError(f'{field!r}[{j}] must be a string, got {type(item).__name__}')
    if not item.strip():
      raise ValueError(f'{field!r}[{j}] is an empty string')
  return tuple(value)


def _parse_entry(
  entry: object, subset: str, regions: int, target_source: TargetSource
) -> CvtgExample:
  """One ``data_list`` entry; raises ValueError with the problem."""
  if not isinstance(entry, dict):
    raise ValueError(f'entry must be an object, got {type(entry).__name__}')
  for field in ('index', 'prompt', 'carrier_list', 'sentence_list'):
    if field not in entry:
      raise ValueError(f'missing field {field!r}')
  index = entry['index']
  if isinstance(index, bool) or not isinstance(index, int):
    raise ValueError(f"'index' must be an integer, got {type(index).__name__}")
  prompt = entry['prompt']
  if not isinstance(prompt, str):
    raise ValueError(f"'prompt' must be a string, got {type(prompt).__name__}")
  if not prompt.strip():
    raise ValueError("'prompt' is an empty string")
  carriers = _string_list(entry['carrier_list'], 'carrier_list', allow_empty_list=True)
  sentences = _string_list(
    entry['sentence_list'], 'sentence_list', allow_empty_list=False
  )

  if target_source == 'prompt':
    targets = tuple(quoted_texts(prompt))
    if not targets:
      raise ValueError("no single-quoted target text in 'prompt'")
  else:
    targets = tuple(
      t for s in sentences for t in (quoted_texts(s, word_boundary=True) or [s.strip()])
    )
  return CvtgExample(subset, regions, index, prompt, carriers, targets, sentences)


def _load_file(
  path: str, rel: str, subset: str, regions: int, target_source: TargetSource
) -> list[CvtgExample]:
  data = _read_json(path, rel)
  if not isinstance(data, dict) or 'data_list' not in data:
    raise DatasetError(f"{rel}: top level must be an object with a 'data_list' field")
  entries = data['data_list']
  if not isinstance(entries, list):
    raise DatasetError(
      f"{rel}: 'data_list' must be a list, got {type(entries).__name__}"
    )
  examples: list[CvtgExample] = []
  seen: dict[int, int] = {}
  for pos, entry in enumerate(entries):
    where = f'{rel}: data_list[{pos}]'
    index = entry.get('index') if isinstance(entry, dict) else None
    if isinstance(index, int) and not isinstance(index, bool):
      where += f' (index {index})'
    try:
      example = _parse_entry(entry, subset, regions, target_source)
    except ValueError as e:
      raise DatasetError(f'{where}: {e}') from None
    if example.index in seen:
      raise DatasetError(
        f'{where}: duplicate index, also at data_list[{seen[example.index]}]'
      )
    seen[example.index] = pos
    examples.append(example)
  examples.sort(key=lambda ex: ex.index)
  return examples


def load_cvtg(
  root: str | os.PathLike[str],
  *,
  subsets: Sequence[str] = SUBSETS,
  regions: Iterable[int] = REGION_COUNTS,
  max_examples: int | None = None,
  target_source: TargetSource = 'sentences',
) -> list[CvtgExample]:
  """Reads CVTG-2K from ``root`` (see the module docstring for the layout).

  Args:
    root: the folder holding ``CVTG/`` and ``CVTG-Style/``.
    subsets: which of ``'CVTG'``, ``'CVTG-Style'`` to read.
    regions: which region counts (file names) to read.
    max_examples: keep only the first ``max_examples`` in the documented order.
    target_source: ``'sentences'`` (default) or ``'prompt'`` (official scorer).

  Returns:
    The examples, in a deterministic order.

  Raises:
    DatasetMissingError: a missing root, subset folder or file.
    DatasetError: a malformed file.
    ValueError: invalid options.
  """
  unknown = [s for s in subsets if s not in SUBSETS]
  if unknown:
    raise ValueError(f'unknown CVTG-2K subsets {unknown}; choose from {SUBSETS}')
  regions = list(regions)
  if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in regions):
    raise ValueError(f'region counts must be positive integers, got {regions}')
  regions = sorted(set(regions))
  if max_examples is not None and max_examples < 0:
    raise ValueError(f'max_examples must be >= 0, got {max_examples}')
  if target_source not in ('prompt', 'sentences'):
    raise ValueError(f'unknown target_source {target_source!r}')
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise DatasetMissingError(f'CVTG-2K root {root} is not a folder: {LAYOUT}')

  examples: list[CvtgExample] = []
  for subset in (s for s in SUBSETS if s in subsets):
    dirname = _subset_dir(root, subset)
    for n in regions:
      if max_examples is not None and len(examples) >= max_examples:
        return examples[:max_examples]
      rel = f'{dirname}/{n}.json'
      examples += _load_file(
        os.path.join(root, dirname, f'{n}.json'), rel, subset, n, target_source
      )
  return examples if max_examples is None else examples[:max_examples]
