"""make_prompts: generated multi-region prompts, deterministic, distinct, CVTG-free."""

import collections
import json
import os
import subprocess
import sys

import pytest

from tests.data.cvtg_fixture import make_cvtg_fixture, write_json
from varrl_jax.data import cvtg, make_prompts

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_prompts_are_deterministic_distinct_and_quote_their_targets():
  prompts, dropped = make_prompts.generate(400, (2, 5), seed=0)
  assert dropped == 0 and prompts == make_prompts.generate(400, (2, 5), seed=0)[0]
  assert prompts != make_prompts.generate(400, (2, 5), seed=1)[0]
  assert len({make_prompts.normalize(p) for p, _ in prompts}) == 400
  for i, (prompt, targets) in enumerate(prompts):
    assert len(targets) == 2 + i % 4  # region counts cycle 2, 3, 4, 5
    # The official scorer's reading of the prompt gives the targets back.
    assert tuple(cvtg.quoted_texts(prompt)) == targets
    assert len({t.casefold() for t in targets}) == len(targets)
    for t in targets:
      assert 1 <= len(t.split()) <= 4 and t.replace(' ', '').isalnum(), t
  counts = collections.Counter(len(t.split()) for _, ts in prompts for t in ts)
  assert set(counts) == {1, 2, 3, 4}


def test_a_longer_file_extends_a_shorter_one():
  short, _ = make_prompts.generate(50, (1, 3), seed=4)
  long, _ = make_prompts.generate(120, (1, 3), seed=4)
  assert long[:50] == short


def test_pinned_first_prompt():
  """The stream is part of the format: a change here changes every file."""
  (prompt, targets), *_ = make_prompts.generate(1, (2, 2), seed=0)[0]
  assert (prompt, targets) == (
    "A photo of a ski lodge entrance with a card labeled '6 steps' in neon pink "
    "script and a road sign labeled 'Dream The Honey'.",
    ('6 steps', 'Dream The Honey'),
  )


@pytest.mark.parametrize(
  'text, want',
  [('2..5', (2, 5)), ('3', (3, 3)), (' 1..8 ', (1, 8))],
)
def test_parse_regions(text, want):
  assert make_prompts.parse_regions(text) == want


@pytest.mark.parametrize('text', ['5..2', '0..3', '2..9', 'two', '1..2..3', ''])
def test_parse_regions_rejects(text):
  with pytest.raises(ValueError, match=rf'regions {text!r}: expected R or A\.\.B'):
    make_prompts.parse_regions(text)


def test_cvtg_prompts_are_dropped_and_counted(tmp_path):
  prompts, _ = make_prompts.generate(30, (2, 3), seed=0)
  root = tmp_path / 'CVTG-2K'
  make_cvtg_fixture(root, n_per_file=1)
  # Two of ours appear in "CVTG-2K" (other case and spacing): both must go.
  entries = json.loads((root / 'CVTG' / '2.json').read_text())['data_list']
  for j, i in enumerate((3, 17)):
    prompt, targets = prompts[i]
    entries.append(
      {
        'index': 100 + j,
        'prompt': '  ' + prompt.upper().replace(' ', '   '),
        'carrier_list': ['sign'] * len(targets),
        'sentence_list': [f"'{t}'" for t in targets],
      }
    )
  write_json(root, 'CVTG/2.json', {'data_list': entries})
  out = tmp_path / 'p.jsonl'
  summary = make_prompts.run(30, '2..3', 0, str(out), cvtg_root=str(root))
  assert summary.endswith('; 2 equal to a CVTG-2K prompt dropped (10 compared)')
  written = [json.loads(x) for x in out.read_text().splitlines()]
  assert len(written) == 30
  kept = [(r['prompt'], tuple(r['targets'])) for r in written]
  assert kept[:3] == prompts[:3] and prompts[3] not in kept and prompts[17] not in kept
  # Drops are replaced by later prompts of the stream; the region cycle holds.
  assert [len(t) for _, t in kept] == [2 + i % 2 for i in range(30)]
  exclude = frozenset(make_prompts.normalize(prompts[i][0]) for i in (3, 17))
  assert kept == make_prompts.generate(30, (2, 3), 0, exclude)[0]


def _cli(*args):
  return subprocess.run(
    [sys.executable, '-m', 'varrl_jax.data.make_prompts', *args],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=120,
  )


def test_cli_writes_the_file_and_reports_errors_in_one_line(tmp_path):
  out = tmp_path / 'prompts.jsonl'
  run = _cli('--n=200', '--regions=2..5', '--seed=3', f'--out={out}')
  assert run.returncode == 0, run.stderr
  assert f'wrote 200 prompts (2..5 regions, seed 3) to {out}' in run.stdout
  want = make_prompts.generate(200, (2, 5), seed=3)[0]
  assert out.read_text() == make_prompts.to_jsonl(want)

  again = _cli('--n=10', f'--out={out}')
  assert again.returncode == 2
  assert (
    again.stderr.strip() == f'error: --out={out} exists; pass --overwrite to replace it'
  )
  assert _cli('--n=10', f'--out={out}', '--overwrite').returncode == 0
  assert len(out.read_text().splitlines()) == 10
  assert not (tmp_path / 'prompts.jsonl.tmp').exists()

  bad = _cli('--n=10', '--regions=5..2', f'--out={tmp_path}/x.jsonl')
  assert bad.returncode == 2 and not (tmp_path / 'x.jsonl').exists()
  assert bad.stderr.strip().splitlines() == [
    "error: --regions: regions '5..2': expected R or A..B with 1 <= A <= B <= 8"
  ]
  missing = _cli('--n=10', f'--out={tmp_path}/y.jsonl', f'--cvtg={tmp_path}/none')
  assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
  assert missing.stderr.startswith(f'error: --cvtg={tmp_path}/none: CVTG-2K root')
  zero = _cli('--n=0', f'--out={tmp_path}/z.jsonl')
  assert zero.returncode == 2 and not (tmp_path / 'z.jsonl').exists()
  assert zero.stderr.strip().splitlines() == [
    'error: --n=0: expected at least 1 prompt'
  ]
