"""Text prompt lists as RL sources: jsonl, cvtg, tfds, generated; held-out prompts."""

import json
import random

import numpy as np
import pytest

from tests.data.cvtg_fixture import make_cvtg_fixture
from varrl_jax.config import base_config
from varrl_jax.data import cvtg, make_prompts, prompt_sources
from varrl_jax.rl import loop


def _config(prompts, per_update=4, seed=0, heldout=0.0, rewards='ocr'):
  c = base_config()
  c.rl.prompts = prompts
  c.rl.prompts_per_update = per_update
  c.rl.data_seed = seed
  c.rl.heldout_prompts = heldout
  c.rl.rewards = rewards
  return c


def _records(n, targets=True):
  return [
    {
      'prompt': f'a sign that says WORD{i}',
      **({'targets': [f'WORD{i}']} if targets else {}),
    }
    for i in range(n)
  ]


def _write(path, records, extra=''):
  path.write_text(''.join(json.dumps(r) + '\n' for r in records) + extra)
  return path


def test_jsonl_order_is_a_seeded_permutation_per_epoch(tmp_path):
  path = _write(tmp_path / 'p.jsonl', _records(10))
  c = _config(f'jsonl:{path}', per_update=5)
  flat = [x for u in range(6) for x in loop.update_prompts(c, u)]  # 3 epochs
  want = [(r['prompt'], tuple(r['targets'])) for r in _records(10)]
  for e in range(3):
    assert sorted(flat[e * 10 : (e + 1) * 10]) == sorted(want)
  assert flat[:10] != want and flat[:10] != flat[10:20]
  # A resumed run: update 4 from a fresh source, without updates 0..3.
  fresh = prompt_sources.from_config(_config(f'jsonl:{path}', per_update=5))
  assert fresh.batch(4, 5) == flat[20:25]
  other = _config(f'jsonl:{path}', per_update=5, seed=1)
  assert [x for u in range(2) for x in loop.update_prompts(other, u)] != flat[:10]


def test_class_order_is_unchanged_by_the_shared_stream():
  """ClassPrompts now walks `epoch_stream`: the pinned order of seed 0."""
  c = base_config()
  c.rl.prompts, c.model.var.num_classes = 'classes:all', 5
  assert [int(p) for u in range(2) for p, _ in loop.update_prompts(c, u)][:5] == [
    int(i) for i in np.random.default_rng([0, 0, 0]).permutation(5)
  ]


def test_jsonl_blank_lines_bom_and_optional_targets(tmp_path):
  path = tmp_path / 'p.jsonl'
  path.write_text(
    '\ufeff{"prompt": "a", "targets": ["A"], "id": 7}\n\n  \n'
    '{"prompt": "b"}\n{"prompt": "c", "targets": null}\n'
  )
  source = prompt_sources.from_config(
    _config(f'jsonl:{path}', rewards='jpeg_compressibility')
  )
  assert sorted(source.train) == [('a', ('A',)), ('b', ()), ('c', ())]
  assert source.untargeted == f'{path}:4'
  # The ocr reward needs targets: named at the first record without.
  with pytest.raises(
    ValueError, match=rf"{path}:4: no targets, but config.rl.rewards='ocr:2'"
  ):
    prompt_sources.from_config(_config(f'jsonl:{path}', rewards='ocr:2'))


@pytest.mark.parametrize(
  'line, message',
  [
    (
      '{"prompt": "a", }',
      ':3: invalid JSON: Expecting property name enclosed in double quotes (column 17)',
    ),
    ('["a"]', ":3: expected a JSON object with a 'prompt' field, got array"),
    ('{"targets": ["A"]}', ":3: field 'prompt': missing"),
    ('{"prompt": 5}', ":3: field 'prompt': expected a string, got number"),
    ('{"prompt": "  "}', ":3: field 'prompt': empty string"),
    (
      '{"prompt": "a", "targets": "A"}',
      ":3: field 'targets': expected an array of strings, got string",
    ),
    (
      '{"prompt": "a", "targets": ["A", 1]}',
      ":3: field 'targets'[1]: expected a string, got number",
    ),
    ('{"prompt": "a", "targets": [""]}', ":3: field 'targets'[0]: empty string"),
    (
      '{"prompt": "sign \\ud800"}',
      ":3: field 'prompt': not valid text (a lone UTF-16 surrogate)",
    ),
    (
      '{"prompt": "a", "targets": ["\\udfff"]}',
      ":3: field 'targets'[0]: not valid text (a lone UTF-16 surrogate)",
    ),
  ],
)
def test_bad_jsonl_line_is_one_error_naming_file_line_field(tmp_path, line, message):
  path = tmp_path / 'p.jsonl'
  path.write_text('{"prompt": "x", "targets": ["X"]}\n\n' + line + '\n{"prompt": 1}\n')
  spec = f'jsonl:{path}'
  with pytest.raises(ValueError) as e:
    prompt_sources.from_config(_config(spec))
  assert str(e.value) == f'config.rl.prompts={spec!r}: {path}{message}'


def test_empty_and_missing_jsonl(tmp_path):
  path = tmp_path / 'empty.jsonl'
  path.write_text('\n  \n')
  with pytest.raises(ValueError, match=rf'{path}: no prompts \(the file is empty\)$'):
    prompt_sources.from_config(_config(f'jsonl:{path}'))
  with pytest.raises(ValueError, match=f'cannot read {tmp_path}/absent.jsonl'):
    prompt_sources.from_config(_config(f'jsonl:{tmp_path}/absent.jsonl'))


@pytest.mark.parametrize('heldout, count', [(4, 4), (0.25, 5), (0.001, 1)])
def test_heldout_prompts_leave_training(tmp_path, heldout, count):
  records = _records(20) + _records(3)  # the first three appear twice
  path = _write(tmp_path / 'p.jsonl', records)
  source = prompt_sources.from_config(_config(f'jsonl:{path}', heldout=heldout))
  held = {p for p, _ in source.heldout}
  assert len(source.heldout) == count == len(held)
  assert held.isdisjoint(p for p, _ in source.train)
  assert {p for p, _ in source.train} | held == {r['prompt'] for r in records}
  streamed = {p for u in range(12) for p, _ in source.batch(u, 4)}
  assert streamed.isdisjoint(held)
  # The choice is the list's content, not its order.
  random.Random(0).shuffle(records)
  again = prompt_sources.from_config(
    _config(f'jsonl:{_write(tmp_path / "q.jsonl", records)}', heldout=heldout, seed=3)
  )
  assert {p for p, _ in again.heldout} == held


def test_heldout_evaluation_is_seeded_and_never_repeats(tmp_path):
  path = _write(tmp_path / 'p.jsonl', _records(30))
  source = prompt_sources.from_config(_config(f'jsonl:{path}', heldout=6))
  a = source.evaluation(4, seed=0)
  assert a == source.evaluation(4, seed=0) and len(a) == 4
  assert set(a) < set(source.heldout)
  assert source.evaluation(0, 0) != source.evaluation(0, 1)
  assert sorted(source.evaluation(0, 0)) == sorted(source.evaluation(100, 5))
  assert len(source.evaluation(100, 5)) == 6
  plain = prompt_sources.from_config(_config(f'jsonl:{path}'))
  with pytest.raises(
    ValueError, match='no held-out prompts.*config.rl.heldout_prompts'
  ):
    plain.evaluation(4, 0)


@pytest.mark.parametrize(
  'heldout, spec, message',
  [
    (10, 'jsonl', 'holds out 10 of the 10 distinct prompts, leaving none to train on'),
    (
      2.5,
      'jsonl',
      'config.rl.heldout_prompts=2.5: a count >= 1 must be a whole number',
    ),
    (-1, 'jsonl', 'config.rl.heldout_prompts=-1.0: expected a count'),
    (
      3,
      'synthetic',
      'config.rl.heldout_prompts=3.0: only for jsonl/cvtg/tfds/generated',
    ),
  ],
)
def test_bad_heldout(tmp_path, heldout, spec, message):
  path = _write(tmp_path / 'p.jsonl', _records(10))
  spec = f'jsonl:{path}' if spec == 'jsonl' else spec
  with pytest.raises(ValueError, match=message.replace('.', r'\.').replace('(', r'\(')):
    prompt_sources.from_config(_config(spec, heldout=heldout))


def test_cvtg_source_is_the_benchmark(tmp_path):
  root = tmp_path / 'CVTG-2K'
  make_cvtg_fixture(root, n_per_file=2)
  source = prompt_sources.from_config(_config(f'cvtg:{root}', heldout=2))
  want = {(e.prompt, tuple(e.targets)) for e in cvtg.load_cvtg(root)}
  assert set(source.train) | set(source.heldout) == want and len(want) == 16
  assert len(source.heldout) == 2
  with pytest.raises(
    ValueError, match=rf"config.rl.prompts='cvtg:{tmp_path}/x': CVTG-2K root"
  ):
    prompt_sources.from_config(_config(f'cvtg:{tmp_path}/x'))


def test_tfds_source_reads_a_built_dataset(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  pytest.importorskip('array_record')
  from varrl_jax.data import cvtg_tfds

  root = tmp_path / 'CVTG-2K'
  make_cvtg_fixture(root, n_per_file=1)
  cvtg_tfds.build(root, tmp_path / 'tfds')
  spec = f'tfds:cvtg2k,split=test,data_dir={tmp_path}/tfds'
  source = prompt_sources.from_config(_config(spec))
  assert sorted(source.train) == sorted(
    (e.prompt, tuple(e.targets)) for e in cvtg.load_cvtg(root)
  )
  with pytest.raises(
    ValueError, match=r"cannot open TFDS 'cvtg2k' split 'train' .*Unknown split 'train'"
  ):
    prompt_sources.from_config(_config(f'tfds:cvtg2k,data_dir={tmp_path}/tfds'))
  with pytest.raises(ValueError, match=r"'spilt=test': expected split=SPLIT"):
    prompt_sources.from_config(_config('tfds:cvtg2k,spilt=test'))


def test_generated_source_is_what_make_prompts_writes(tmp_path):
  source = prompt_sources.from_config(_config('generated:n=50,regions=3..4,seed=2'))
  want, _ = make_prompts.generate(50, (3, 4), 2)
  assert source.train == tuple(want)
  path = tmp_path / 'p.jsonl'
  make_prompts.run(50, '3..4', 2, str(path))
  from_file = prompt_sources.from_config(_config(f'jsonl:{path}'))
  assert from_file.train == source.train
  assert from_file.batch(7, 4) == source.batch(7, 4)


def test_generated_defaults_and_bad_specs():
  assert prompt_sources.parse_generated('generated') == (20000, (2, 5), 0)
  assert prompt_sources.parse_generated('generated:seed=3, n=9') == (9, (2, 5), 3)
  for spec, message in [
    ('generated:m=3', "'m=3': expected n=N, regions=A..B or seed=S"),
    ('generated:n=x', "n='x', seed=0: expected integers"),
    ('generated:regions=0..2', "regions '0..2': expected R or A..B"),
    ('generated:n=1', 'n=1: expected at least 2 prompts'),
  ]:
    with pytest.raises(ValueError) as e:
      prompt_sources.from_config(_config(spec))
    assert str(e.value).startswith(f'config.rl.prompts={spec!r}: {message}'), e.value
