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


def _spans(prompt, max_len=48):
  """{quoted byte: (from_start, from_end)} read back from quote_positions."""
  ids, _ = text.encode([prompt], max_len)
  start, end = text.quote_positions(ids)
  data = prompt.encode()
  return [
    (chr(data[i - 1]), int(start[0, i]), int(end[0, i]))
    for i in range(1, 1 + len(data))
    if start[0, i] >= 0
  ]


def test_quote_positions_count_from_both_ends():
  assert _spans("a sign that reads 'OPEN'") == [
    ('O', 0, 3),
    ('P', 1, 2),
    ('E', 2, 1),
    ('N', 3, 0),
  ]
  # Two spans, double quotes, and an apostrophe that delimits nothing.
  assert _spans("it's a sign with \"AB\" and 'C'") == [
    ('A', 0, 1),
    ('B', 1, 0),
    ('C', 0, 0),
  ]
  # An apostrophe inside a quoted word stays part of the word.
  assert [c for c, _, _ in _spans("a sign that reads 'DON'T'")] == list("DON'T")
  assert _spans('no quotes here') == []
  # An unclosed quote runs to the end of the prompt, never into the padding.
  assert _spans('reads "XYZ') == [('X', 0, 2), ('Y', 1, 1), ('Z', 2, 0)]


def test_quote_positions_numpy_and_jax_agree():
  import jax.numpy as jnp

  ids, _ = text.encode(["a sign that reads 'OPEN'", "'A' and 'BC' x", 'none'], 32)
  for a, b in zip(text.quote_positions(ids), text.quote_positions(jnp.asarray(ids))):
    np.testing.assert_array_equal(a, np.asarray(b))
