import numpy as np
import pytest

from varrl_jax.models import text


def test_roundtrip_and_layout():
  ids, mask = text.encode(["a sign that reads 'CAFÉ'", 'x'], 40)
  assert ids.shape == (2, 40) and ids.dtype == np.int32
  assert ids[0, 0] == text.BOS and ids[1, :3].tolist() == [
    text.BOS,
    ord('x') + 3,
    text.EOS,
  ]
  assert mask[1].sum() == 3
  assert text.decode(ids) == ["a sign that reads 'CAFÉ'", 'x']


def test_null_prompt_has_one_valid_token():
  ids, mask = text.null_prompt(3, 10)
  assert (ids[:, 0] == text.BOS).all() and mask.sum() == 3


@pytest.mark.parametrize(
  'prompts, message',
  [
    (['ok', ''], 'prompt 1 is empty'),
    (['   '], 'prompt 0 is empty'),
    (
      ['a' * 39],
      r'prompt 0 is too long: 39 bytes, at most 38 fit \(config.model.text_len=40\)',
    ),
    ([3], 'prompt 0: expected str'),
    ('a prompt', 'expected a list of prompts'),
  ],
)
def test_bad_prompts(prompts, message):
  with pytest.raises(text.PromptError, match=message):
    text.encode(prompts, 40)


def test_longest_prompt_that_fits():
  ids, _ = text.encode(['a' * 38], 40)
  assert ids[0, -1] == text.EOS
