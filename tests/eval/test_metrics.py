"""Hand-computed Word Accuracy / NED cases."""

import pytest

from varrl_jax.eval import metrics
from varrl_jax.rewards.types import OcrResult, OcrWord


def ocr(*texts):
  return OcrResult(words=tuple(OcrWord(t, (0.0, 0.0, 1.0, 1.0), 0.9) for t in texts))


def test_split_words():
  cfg = metrics.MetricConfig()
  assert metrics.split_words(['Hello,  World!', ' '], cfg) == ['hello,', 'world!']
  strip = metrics.MetricConfig(strip_punct=True)
  assert metrics.split_words(["'Hello,' World! don't --"], strip) == [
    'hello',
    'world',
    "don't",
  ]
  case = metrics.MetricConfig(case_sensitive=True)
  assert metrics.split_words(['Hello World'], case) == ['Hello', 'World']


def test_score_image_hand_computed():
  # Target words: big, sale, open, now. 'open' is read as 'opem' (1 edit of 4);
  # 'now' shares nothing in place with any reading.
  s = metrics.score_image(['Big Sale', 'Open Now'], ocr('BIG SALE', 'opem'))
  assert s.n_words == 4
  assert s.n_correct == 2
  assert s.word_similarity == pytest.approx((1.0, 1.0, 0.75, 0.0))
  assert not s.failed


def test_recognized_texts_may_be_plain_strings():
  s = metrics.score_image(['Big Sale'], ['big', 'sale'])
  assert (s.n_words, s.n_correct) == (2, 2)


def test_punctuation_kept_by_default():
  s = metrics.score_image(['SALE!'], ocr('sale'))
  assert s.n_correct == 0
  assert s.word_similarity == pytest.approx((0.8,))
  s = metrics.score_image(
    ['SALE!'], ocr('sale'), metrics.MetricConfig(strip_punct=True)
  )
  assert s.n_correct == 1


def test_case_flag():
  assert metrics.score_image(['Sale'], ocr('sale')).n_correct == 1
  cfg = metrics.MetricConfig(case_sensitive=True)
  s = metrics.score_image(['Sale'], ocr('sale'), cfg)
  assert s.n_correct == 0
  assert s.word_similarity == pytest.approx((0.75,))


def test_membership_vs_one_to_one():
  # The official scorer counts membership: one 'sale' satisfies both.
  assert metrics.score_image(['sale sale'], ocr('sale')).n_correct == 2
  cfg = metrics.MetricConfig(one_to_one=True)
  assert metrics.score_image(['sale sale'], ocr('sale'), cfg).n_correct == 1
  assert metrics.score_image(['sale sale'], ocr('sale', 'SALE'), cfg).n_correct == 2


def test_nearest_rule():
  # difflib's ratio prefers 'cbab' (1 − NED = 0); the smallest NED is 'abba' (0.5).
  difflib_cfg = metrics.MetricConfig(nearest='difflib')
  edit_cfg = metrics.MetricConfig(nearest='edit')
  assert metrics.score_image(['aaca'], ['cbab abba'], difflib_cfg).word_similarity == (
    0.0,
  )
  assert metrics.score_image(['aaca'], ['cbab abba'], edit_cfg).word_similarity == (
    0.5,
  )
  with pytest.raises(ValueError, match="unknown nearest rule 'nope'"):
    metrics.score_image(['a'], ['a'], metrics.MetricConfig(nearest='nope'))


def test_nothing_recognized_and_failed_ocr():
  s = metrics.score_image(['a b'], OcrResult())
  assert (s.n_words, s.n_correct, s.word_similarity, s.failed) == (
    2,
    0,
    (0.0, 0.0),
    False,
  )
  s = metrics.score_image(['a b'], OcrResult(failed=True, error='timeout'))
  assert (s.n_words, s.n_correct, s.word_similarity, s.failed) == (
    2,
    0,
    (0.0, 0.0),
    True,
  )


def test_pooled_over_images():
  acc = metrics.MetricAccumulator()
  acc.add(['a b c'], ocr('a b c'))  # 3 of 3
  acc.add(['d'], ocr())  # 0 of 1
  s = acc.summary()
  # Pooled 3/4, not the per-image mean (1 + 0) / 2.
  assert s.word_accuracy == pytest.approx(0.75)
  assert s.ned == pytest.approx(0.75)
  assert (s.n_images, s.n_words, s.n_correct, s.n_failed) == (2, 4, 3, 0)


def test_aggregate_matches_accumulator():
  scores = [
    metrics.score_image(['Big Sale', 'Open Now'], ocr('BIG SALE', 'opem')),
    metrics.score_image(['cafe'], ocr('cafe')),
  ]
  s = metrics.aggregate(scores)
  assert s.word_accuracy == pytest.approx(3 / 5)
  assert s.ned == pytest.approx((1 + 1 + 0.75 + 0 + 1) / 5)


def test_grouped_breakdowns():
  acc = metrics.MetricAccumulator()
  acc.add(['a b'], ocr('a b'), groups={'subset': 'CVTG', 'regions': 2})
  acc.add(['c d e'], ocr('c'), groups={'subset': 'CVTG', 'regions': 3})
  acc.add(['f'], OcrResult(failed=True), groups={'subset': 'CVTG-Style', 'regions': 2})
  groups = acc.by_group()
  assert list(groups['regions']) == [2, 3]
  assert groups['regions'][2].word_accuracy == pytest.approx(2 / 3)
  assert groups['regions'][2].n_failed == 1
  assert groups['regions'][3].word_accuracy == pytest.approx(1 / 3)
  assert groups['subset']['CVTG'].word_accuracy == pytest.approx(3 / 5)
  assert groups['subset']['CVTG-Style'].word_accuracy == 0.0
  assert acc.summary().word_accuracy == pytest.approx(3 / 6)

  flat = acc.as_dict()
  assert flat['word_accuracy'] == pytest.approx(0.5)
  assert flat['regions=3/n_words'] == 3.0
  assert flat['subset=CVTG-Style/n_failed'] == 1.0


def test_empty_sets():
  s = metrics.MetricAccumulator().summary()
  assert (s.word_accuracy, s.ned, s.n_images, s.n_words) == (0.0, 0.0, 0, 0)
  acc = metrics.MetricAccumulator()
  acc.add([], ocr('x'))
  assert (acc.summary().n_images, acc.summary().n_words) == (1, 0)
