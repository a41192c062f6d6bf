"""RL prompt sources: the synthetic stream and class ids (config.rl.prompts).

Text lists (jsonl, cvtg, tfds, generated) and held-out prompts:
test_text_prompt_sources.py.
"""

import collections

import pytest

from varrl_jax.config import base_config
from varrl_jax.data import prompt_sources, synthetic
from varrl_jax.rl import loop


def _config(prompts='synthetic', per_update=4, seed=0, num_classes=1000):
  c = base_config()
  c.rl.prompts = prompts
  c.rl.prompts_per_update = per_update
  c.rl.data_seed = seed
  c.model.var.num_classes = num_classes
  return c


def test_synthetic_is_the_train_stream_slice_of_the_update():
  c = _config(per_update=3, seed=5)
  want = synthetic.prompts(
    'train', 3, seed=5, start=6, variety=synthetic.Variety.from_config(c.data)
  )
  assert loop.update_prompts(c, 2) == [(p.prompt, tuple(p.targets)) for p in want]


def test_classes_all_walks_a_permutation_per_epoch():
  c = _config('classes:all', per_update=5, num_classes=10)
  batches = [loop.update_prompts(c, u) for u in range(6)]  # 3 epochs of 10
  flat = [p for b in batches for p in b]
  assert all(t == () for _, t in flat)
  ids = [int(p) for p, _ in flat]
  for epoch in range(3):
    assert sorted(ids[epoch * 10 : (epoch + 1) * 10]) == list(range(10))
  assert ids[:10] != ids[10:20]  # a fresh order each epoch
  assert ids[:10] != list(range(10))  # shuffled


def test_update_prompts_depend_on_config_and_update_only():
  """What a resumed run needs: update u's prompts without updates 0..u-1."""
  c = _config('classes:3,5,7,11', per_update=3)
  stream = [p for u in range(5) for p in loop.update_prompts(c, u)]
  assert loop.update_prompts(c, 3) == stream[9:12]
  assert (
    loop.update_prompts(_config('classes:3,5,7,11', per_update=3), 3) == stream[9:12]
  )
  other = _config('classes:3,5,7,11', per_update=3, seed=1)
  assert [p for u in range(5) for p in loop.update_prompts(other, u)] != stream


def test_listed_classes_and_repeats():
  c = _config('classes: 207, 360,387,387', per_update=8)
  source = prompt_sources.from_config(c)
  assert source.ids == (207, 360, 387, 387)
  counts = collections.Counter(p for p, _ in source.batch(0, 8))  # two epochs
  assert counts == {'207': 2, '360': 2, '387': 4}


def test_class_file_with_comments(tmp_path):
  path = tmp_path / 'classes.txt'
  path.write_text('# dogs\n207\n\n  360  # otter\n387\n')
  source = prompt_sources.from_config(_config(f'classes:@{path}'))
  assert source.ids == (207, 360, 387)


def test_evaluation_choice_is_fixed_and_seeded():
  source = prompt_sources.from_config(_config('classes:all', num_classes=10))
  a = source.evaluation(15, seed=0)
  assert a == source.evaluation(15, seed=0)
  assert sorted(int(p) for p, _ in a[:10]) == list(range(10))  # cycles
  assert a != source.evaluation(15, seed=1)
  assert a[:4] != source.batch(0, 4)  # not the training order


@pytest.mark.parametrize(
  'spec, message',
  [
    (
      'classes:1000',
      'class 1000 is out of range 0..999 (config.model.var.num_classes=1000)',
    ),
    ('classes:-1', 'class -1 is out of range'),
    ('classes:2x7', "'2x7' is not a class id (an integer)"),
    ('classes:', 'no class ids'),
    ('classes: , ', 'no class ids'),
    ('imagenet', "expected 'synthetic', 'generated[:n=N,"),
  ],
)
def test_bad_specs_are_one_clear_error(spec, message):
  with pytest.raises(ValueError) as e:
    prompt_sources.from_config(_config(spec))
  msg = str(e.value)
  assert msg.startswith(f'config.rl.prompts={spec!r}') and message in msg, msg
  assert '\n' not in msg


def test_bad_files_name_file_and_line(tmp_path):
  path = tmp_path / 'classes.txt'
  path.write_text('207\n# fine\nthree\n')
  with pytest.raises(ValueError, match=rf"{path}:3: 'three' is not a class id"):
    prompt_sources.from_config(_config(f'classes:@{path}'))
  path.write_text('# nothing here\n\n')
  with pytest.raises(ValueError, match='no class ids'):
    prompt_sources.from_config(_config(f'classes:@{path}'))
  with pytest.raises(ValueError, match=f'cannot read {tmp_path}/missing.txt'):
    prompt_sources.from_config(_config(f'classes:@{tmp_path}/missing.txt'))
