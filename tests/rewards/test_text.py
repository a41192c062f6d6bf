"""Hand-computed cases for the text-rendering rewards."""

import numpy as np
import pytest

from varrl_jax.rewards import text
from varrl_jax.rewards.types import OcrResult, OcrWord


def _box(i):
  return (10.0 * i, 0.0, 10.0 * i + 8.0, 5.0)


def ocr(*texts):
  """OCR result reading ``texts`` in order; entry ``i`` has box ``_box(i)``."""
  return OcrResult(words=tuple(OcrWord(t, _box(i), 0.9) for i, t in enumerate(texts)))


# --- edit distance ----------------------------------------------------------


@pytest.mark.parametrize(
  'a, b, dist',
  [
    ('kitten', 'sitting', 3),
    ('flaw', 'lawn', 2),
    ('', 'abc', 3),
    ('abc', '', 3),
    ('', '', 0),
    ('same', 'same', 0),
    ('ab', 'ba', 2),
    ('intention', 'execution', 5),
  ],
)
def test_levenshtein_known_pairs(a, b, dist):
  assert text.levenshtein(a, b) == dist
  assert text.levenshtein(b, a) == dist


def _reference_levenshtein(a, b):
  """The textbook O(|a|·|b|) table."""
  prev = list(range(len(b) + 1))
  for i, ca in enumerate(a, start=1):
    cur = [i]
    for j, cb in enumerate(b, start=1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
    prev = cur
  return prev[-1]


def _random_pairs(seed, n_short=2000, n_long=60):
  """Small alphabets make many matches; lengths past 64 cross a machine word
  (rapidfuzz switches to its block algorithm); non-ASCII and empty included."""
  rng = np.random.default_rng(seed)
  alphabet_a, alphabet_b = list('ab cé中'), list('abcdé中')
  for size in [8] * n_short + [150] * n_long:
    a = ''.join(rng.choice(alphabet_a, size=rng.integers(0, size)))
    b = ''.join(rng.choice(alphabet_b, size=rng.integers(0, size)))
    yield a, b


def test_levenshtein_matches_the_table_on_random_strings():
  for a, b in _random_pairs(0):
    want = _reference_levenshtein(a, b)
    assert text.levenshtein(a, b) == want
    assert type(text.levenshtein(a, b)) is int
    longest = max(len(a), len(b))
    # Exactly equal (==), as the hand-written version gave: same float ops.
    assert text.ned(a, b) == (want / longest if longest else 0.0)
    assert text.similarity(a, b) == 1.0 - (want / longest if longest else 0.0)


def _random_ocr(rng):
  words = ['sale', 'sole', 'open', 'opne', 'big', 'bog', 'now', 'x', 'café', '中文']
  texts = [
    ' '.join(rng.choice(words, size=rng.integers(1, 4)))
    for _ in range(rng.integers(0, 5))
  ]
  targets = [
    ' '.join(rng.choice(words, size=rng.integers(1, 3)))
    for _ in range(rng.integers(1, 4))
  ]
  return targets, ocr(*texts)


def test_rewards_match_the_table_distance_on_random_readings(monkeypatch):
  """Rewards, parts and boxes with rapidfuzz == with the textbook table."""
  rng = np.random.default_rng(1)
  cases = [_random_ocr(rng) for _ in range(300)]
  new = [
    text.text_reward(t, o, kind=k)
    for t, o in cases
    for k in ('comp_sim_pen', 'one_minus_ned')
  ]
  monkeypatch.setattr(text, '_lev_distance', _reference_levenshtein)
  old = [
    text.text_reward(t, o, kind=k)
    for t, o in cases
    for k in ('comp_sim_pen', 'one_minus_ned')
  ]
  assert new == old
  assert len({r.sim for r in new}) > 10  # many different partial matches


def test_ned_known_pairs():
  assert text.ned('kitten', 'sitting') == pytest.approx(3 / 7)
  assert text.ned('', '') == 0.0
  assert text.ned('abc', '') == 1.0
  assert text.ned('cool', 'coool') == pytest.approx(1 / 5)
  assert text.similarity('Hello', 'HELLO') == pytest.approx(1 - 4 / 5)


def test_normalize_text():
  assert text.normalize_text('  Hello \t  World\n') == 'hello world'
  assert text.normalize_text(' Hello  World ', case_sensitive=True) == 'Hello World'


# --- comp + sim - pen -------------------------------------------------------


def _check(r, reward, comp, sim, pen):
  assert not r.failed
  assert r.reward == pytest.approx(reward)
  assert (r.comp, r.sim, r.pen) == pytest.approx((comp, sim, pen))


def test_exact_line_match():
  r = text.comp_sim_pen_reward(['Hello World'], ocr('HELLO WORLD'))
  _check(r, 2.0, 1.0, 1.0, 0.0)
  assert r.matched_boxes == [_box(0)]


def test_exact_match_from_separate_words():
  # Word-level OCR: the target's words are separate entries.
  r = text.comp_sim_pen_reward(['Hello World'], ocr('hello', 'world'))
  _check(r, 2.0, 1.0, 1.0, 0.0)
  assert r.matched_boxes == [_box(0), _box(1)]


def test_word_order_is_not_required_for_completeness():
  r = text.comp_sim_pen_reward(['hello world'], ocr('world', 'hello'))
  assert r.comp == 1.0


def test_whitespace_is_normalized():
  r = text.comp_sim_pen_reward(['  Hello   World '], ocr(' hello\tworld'))
  _check(r, 2.0, 1.0, 1.0, 0.0)


def test_case_difference_is_ignored_by_default():
  r = text.comp_sim_pen_reward(['Hello'], ocr('HELLO'))
  _check(r, 2.0, 1.0, 1.0, 0.0)


def test_case_sensitive():
  r = text.comp_sim_pen_reward(['Hello'], ocr('HELLO'), case_sensitive=True)
  # sim = 1 - 4/5; C_T = {H,e,l,l,o}, C_R = {H,E,L,L,O}: 4 + 4 mismatches of 5.
  _check(r, 0.0 + 0.2 - 0.6 * 8 / 5, 0.0, 0.2, 0.6 * 8 / 5)
  assert r.matched_boxes == []  # 0.2 < box_min_similarity


def test_extra_word_is_penalized():
  r = text.comp_sim_pen_reward(['SALE'], ocr('SALE', 'NOW'))
  # C_R - C_T = {n, o, w}: 3 of 4 target characters.
  _check(r, 2.0 - 0.6 * 3 / 4, 1.0, 1.0, 0.6 * 3 / 4)
  assert r.matched_boxes == [_box(0)]


def test_missing_target():
  r = text.comp_sim_pen_reward(['big sale', 'xyz'], ocr('big sale'))
  # 'xyz' shares no character with any candidate: similarity 0.
  _check(r, 0.5 + 0.5 - 0.6 * 3 / 10, 0.5, 0.5, 0.6 * 3 / 10)
  assert r.matched_boxes == [_box(0)]


def test_repeated_character():
  r = text.comp_sim_pen_reward(['cool'], ocr('coool'))
  _check(r, 0.8 - 0.6 * 1 / 4, 0.0, 0.8, 0.6 * 1 / 4)
  assert r.matched_boxes == [_box(0)]  # 0.8 >= 0.5


def test_repeated_word():
  r = text.comp_sim_pen_reward(['SALE'], ocr('SALE SALE'))
  _check(r, 2.0 - 0.6, 1.0, 1.0, 0.6)


def test_one_reading_cannot_satisfy_two_targets():
  r = text.comp_sim_pen_reward(['SALE', 'SALE'], ocr('SALE'))
  _check(r, 0.5 + 1.0 - 0.6 * 4 / 8, 0.5, 1.0, 0.6 * 4 / 8)


def test_completeness_takes_the_largest_set():
  # Greedy in target order would let 'x y' use both tokens: 1/3.
  r = text.comp_sim_pen_reward(['x y', 'x', 'y'], ocr('x', 'y'))
  assert r.comp == pytest.approx(2 / 3)


def test_empty_ocr_is_not_a_failure():
  r = text.comp_sim_pen_reward(['abc'], OcrResult())
  _check(r, -0.6, 0.0, 0.0, 0.6)
  assert r.matched_boxes == []


def test_pen_weight():
  r = text.comp_sim_pen_reward(['cool'], ocr('coool'), pen_weight=0.0)
  _check(r, 0.8, 0.0, 0.8, 0.0)


def test_box_threshold():
  r = text.comp_sim_pen_reward(['cool'], ocr('coool'), box_min_similarity=0.9)
  assert r.matched_boxes == []


def test_boxes_are_unique_and_in_ocr_order():
  r = text.comp_sim_pen_reward(
    ['world', 'hello world'], ocr('xx', 'hello world', 'world')
  )
  assert r.matched_boxes == [_box(1), _box(2)]


# --- 1 - NED ------------------------------------------------------------------


def test_one_minus_ned():
  r = text.one_minus_ned_reward(['cool', 'xyz'], ocr('coool'))
  assert not r.failed
  assert r.reward == pytest.approx((0.8 + 0.0) / 2)
  assert r.sim == pytest.approx(r.reward)
  assert r.comp == 0.0
  assert r.pen == pytest.approx(0.6 * 4 / 7)  # logged, not in the reward


def test_one_minus_ned_exact():
  r = text.one_minus_ned_reward(['Big Sale', 'Open'], ocr('big', 'sale', 'OPEN'))
  assert r.reward == pytest.approx(1.0)


# --- failures -----------------------------------------------------------------


def test_failed_ocr_gives_fallback():
  failed = OcrResult(failed=True, error='timeout')
  for fn in (text.comp_sim_pen_reward, text.one_minus_ned_reward):
    r = fn(['abc'], failed, fallback=-1.0)
    assert r.failed
    assert r.reward == -1.0
    assert (r.comp, r.sim, r.pen) == (0.0, 0.0, 0.0)
    assert r.matched_boxes == []
    assert 'timeout' in r.error


@pytest.mark.parametrize(
  'targets, result',
  [
    ([], ocr('abc')),
    (['', '   '], ocr('abc')),
    ('abc', ocr('abc')),  # a bare string is not a list of targets
    ([1, 2], ocr('abc')),
    (None, ocr('abc')),
    (['abc'], None),
    (['abc'], OcrResult(words=(OcrWord(None, _box(0), 0.9),))),
    (['abc'], OcrResult(words=('abc',))),
  ],
)
def test_invalid_input_gives_fallback(targets, result):
  r = text.comp_sim_pen_reward(targets, result, fallback=0.25)
  assert r.failed
  assert r.reward == 0.25
  assert r.error


def test_unknown_kind_raises():
  with pytest.raises(ValueError, match='kind'):
    text.text_reward(['a'], ocr('a'), kind='bleu')


# --- batch --------------------------------------------------------------------


def test_rewards_for_batch():
  out = text.rewards_for_batch(
    [['Hello World'], ['abc'], ['abc'], []],
    [ocr('hello world'), OcrResult(failed=True, error='crash'), OcrResult(), ocr('x')],
    fallback=-2.0,
  )
  assert out.rewards.dtype == np.float32
  np.testing.assert_allclose(out.rewards, [2.0, -2.0, -0.6, -2.0], rtol=1e-6)
  np.testing.assert_allclose(out.comp, [1.0, 0.0, 0.0, 0.0])
  np.testing.assert_allclose(out.pen, [0.0, 0.0, 0.6, 0.0], rtol=1e-6)
  np.testing.assert_array_equal(out.failed, [False, True, False, True])
  assert out.num_failed == 2
  assert out.boxes == [[_box(0)], [], [], []]


def test_rewards_for_batch_one_minus_ned():
  out = text.rewards_for_batch(
    [['cool'], ['abc']], [ocr('coool'), ocr('abc')], 'one_minus_ned'
  )
  np.testing.assert_allclose(out.rewards, [0.8, 1.0], rtol=1e-6)
  assert out.num_failed == 0


def test_rewards_for_batch_length_mismatch():
  with pytest.raises(ValueError, match='^1 target lists for 0 OCR results$'):
    text.rewards_for_batch([['a']], [])
