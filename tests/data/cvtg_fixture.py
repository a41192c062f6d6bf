"""A tiny CVTG-2K copy in the official layout, for tests.

``make_cvtg_fixture(tmp_path)`` writes ``CVTG/{2,3,4,5}.json`` and
``CVTG-Style/{2,3,4,5}.json`` with ``n_per_file`` entries each and returns the
entries it wrote, keyed by the file path relative to the root.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

_CARRIERS = ('sign', 'poster', 'banner', 'label', 'card')
_ADJECTIVES = ('Open', 'Fresh', 'Grand', 'Happy', 'Quiet', 'Golden', 'Night')
_NOUNS = ('Bakery', 'Market', 'Sale', 'Garden', 'Cafe', 'Library', 'Studio')


def cvtg_entry(index: int, regions: int, *, styled: bool = False) -> dict:
  """One well-formed ``data_list`` entry with ``regions`` quoted targets."""
  targets = [
    f'{_ADJECTIVES[(index + j) % len(_ADJECTIVES)]} {_NOUNS[(2 * index + j) % len(_NOUNS)]}'
    for j in range(regions)
  ]
  carriers = [_CARRIERS[j % len(_CARRIERS)] for j in range(regions)]
  style = ' in bold red letters' if styled else ''
  sentences = [f"a {c} that says '{t}'{style}" for c, t in zip(carriers, targets)]
  prompt = f'A busy street scene with {", ".join(sentences)}.'
  return {
    'index': index,
    'prompt': prompt,
    'carrier_list': carriers,
    'sentence_list': sentences,
  }


def make_cvtg_fixture(
  root: str | os.PathLike[str],
  n_per_file: int = 2,
  *,
  subsets: Sequence[str] = ('CVTG', 'CVTG-Style'),
  regions: Sequence[int] = (2, 3, 4, 5),
  style_dirname: str = 'CVTG-Style',
) -> dict[str, list[dict]]:
  """Writes the fixture under ``root``; returns ``{'CVTG/3.json': entries, …}``."""
  written = {}
  for subset in subsets:
    dirname = style_dirname if subset == 'CVTG-Style' else subset
    os.makedirs(os.path.join(root, dirname), exist_ok=True)
    for n in regions:
      entries = [
        cvtg_entry(i, n, styled=subset == 'CVTG-Style') for i in range(n_per_file)
      ]
      rel = f'{dirname}/{n}.json'
      write_json(root, rel, {'data_list': entries})
      written[rel] = entries
  return written


def write_json(root: str | os.PathLike[str], rel: str, obj: object) -> None:
  """Writes ``obj`` as JSON to ``root/rel``."""
  with open(os.path.join(root, rel), 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=1)


def write_bytes(root: str | os.PathLike[str], rel: str, data: bytes) -> None:
  """Writes raw ``data`` to ``root/rel`` (for malformed-file tests)."""
  with open(os.path.join(root, rel), 'wb') as f:
    f.write(data)
