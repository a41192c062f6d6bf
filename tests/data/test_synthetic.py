"""Tests for the seeded synthetic text-rendering data."""

import re
import shutil

import numpy as np
import pytest

from varrl_jax.data import synthetic

SIZES = [(32, 128), (64, 128), (64, 64), (128, 128)]


@pytest.fixture
def fresh_font_cache():
  # The font lookup is cached per process; tests that fake the search path
  # must not leak their result to other tests.
  synthetic._fonts.cache_clear()
  yield
  synthetic._fonts.cache_clear()


def test_word_list_is_valid_and_partitioned():
  words = synthetic.load_words()
  assert len(words) >= 300
  assert len(set(words)) == len(words)
  assert all(re.fullmatch(r'[A-Z]{3,8}', w) for w in words)
  train, held = synthetic.split_words('train'), synthetic.split_words('heldout_words')
  assert set(train).isdisjoint(held)
  assert set(train) | set(held) == set(words)
  assert 0.05 < len(held) / len(words) < 0.2
  assert synthetic.split_words('heldout') == train


def test_same_seed_same_bytes():
  a = synthetic.make_example(7, 'train', (32, 128))
  b = synthetic.make_example(7, 'train', (32, 128))
  assert a.image.tobytes() == b.image.tobytes()
  assert (a.prompt, a.targets, a.boxes, a.meta) == (
    b.prompt,
    b.targets,
    b.boxes,
    b.meta,
  )
  ds1 = synthetic.SyntheticTextDataset('heldout', (64, 128), seed=3)
  ds2 = synthetic.SyntheticTextDataset('heldout', (64, 128), seed=3)
  for i in [0, 5, 17]:
    assert ds1[i].image.tobytes() == ds2[i].image.tobytes()
    assert ds1[i].prompt == ds2[i].prompt
  g1 = synthetic.make_example(np.random.default_rng(1), 'train', (32, 64))
  g2 = synthetic.make_example(np.random.default_rng(1), 'train', (32, 64))
  assert g1.image.tobytes() == g2.image.tobytes()


def test_different_seeds_differ():
  a = synthetic.SyntheticTextDataset('train', (32, 128), seed=0)
  b = synthetic.SyntheticTextDataset('train', (32, 128), seed=1)
  assert [a[i].prompt for i in range(8)] != [b[i].prompt for i in range(8)]
  assert a[0].image.tobytes() != b[0].image.tobytes()
  assert a[0].image.tobytes() != a[1].image.tobytes()


def test_prompts_match_dataset_without_rendering():
  ds = synthetic.SyntheticTextDataset('heldout_words', (32, 128), seed=5)
  fast = synthetic.prompts('heldout_words', 6, seed=5, start=2)
  assert fast == ds.prompts(6, start=2)
  for i, p in enumerate(fast, start=2):
    assert (p.prompt, p.targets) == (ds[i].prompt, ds[i].targets)


@pytest.mark.parametrize('size', SIZES)
def test_text_fits_and_boxes_inside(size):
  h, w = size
  ds = synthetic.SyntheticTextDataset('train', size, seed=11)
  for i in range(12):
    ex = ds[i]
    assert ex.image.shape == (h, w, 3) and ex.image.dtype == np.uint8
    assert len(ex.boxes) == len(ex.targets)
    for x0, y0, x1, y1 in ex.boxes:
      assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
      # The box holds ink: text and background both appear in it.
      crop = ex.image[y0:y1, x0:x1].astype(np.float32)
      assert np.ptp(crop.mean(-1)) > 60
    if len(ex.boxes) == 2:
      (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = ex.boxes
      assert ax1 <= bx0 or ay1 <= by0  # next word is right of or below


def test_text_colour_contrasts_with_background():
  ds = synthetic.SyntheticTextDataset('train', (32, 128), seed=2)
  for i in range(40):
    meta = ds[i].meta
    for bg in meta['bg_colors']:
      assert synthetic.contrast_ratio(meta['text_color'], bg) >= 4.5


def test_prompts_quote_the_targets():
  for split in synthetic.SPLITS:
    for p in synthetic.prompts(split, 100, seed=9):
      assert 1 <= len(p.targets) <= 2
      assert re.findall(r"'([^']*)'", p.prompt) == list(p.targets)


def test_prompt_string_determines_template_and_carrier():
  # With no quote outside the targets, a prompt maps back to one
  # (template, carrier, words) tuple, so tuple disjointness is string
  # disjointness.
  shells = set()
  for t in range(len(synthetic.TEMPLATES)):
    assert "'" not in synthetic.TEMPLATES[t].text
    for c in synthetic.CARRIERS:
      assert "'" not in c.name
      shells.add(synthetic.format_prompt(['X'], c.name, t))
  assert len(shells) == len(synthetic.TEMPLATES) * len(synthetic.CARRIERS)


def test_splits_are_disjoint():
  train = synthetic.prompts('train', 3000, seed=0)
  heldout = synthetic.prompts('heldout', 1000, seed=0)
  words = synthetic.prompts('heldout_words', 500, seed=0)
  for p in train:
    assert not synthetic.is_reserved_combo(p.targets, p.carrier, p.template_id)
    assert not synthetic.TEMPLATES[p.template_id].heldout
  for p in heldout:
    assert synthetic.is_reserved_combo(p.targets, p.carrier, p.template_id)
  # Other seeds of train must not hit heldout prompts either.
  train_strings = {p.prompt for p in train}
  train_strings |= {p.prompt for p in synthetic.prompts('train', 1000, seed=1)}
  assert train_strings.isdisjoint({p.prompt for p in heldout})
  train_targets = {w for p in train for w in p.targets}
  heldout_targets = {w for p in heldout for w in p.targets}
  new_words = {w for p in words for w in p.targets}
  assert all(synthetic.is_heldout_word(w) for w in new_words)
  assert new_words.isdisjoint(train_targets | heldout_targets)
  # Heldout reuses train words in unseen combinations and templates.
  assert heldout_targets <= set(synthetic.split_words('train'))
  assert any(synthetic.TEMPLATES[p.template_id].heldout for p in heldout)


def test_batch_helper():
  ds = synthetic.SyntheticTextDataset('train', (32, 128), seed=0, size=10)
  batch = ds.get_batch([0, 3, 4])
  assert batch.images.shape == (3, 32, 128, 3) and batch.images.dtype == np.uint8
  assert batch.prompts == [ds[i].prompt for i in (0, 3, 4)]
  assert batch.targets == [list(ds[i].targets) for i in (0, 3, 4)]
  assert all(isinstance(t, list) for t in batch.targets)
  assert len(ds) == 10 and ds[-1].prompt == ds[9].prompt
  with pytest.raises(IndexError):
    ds[10]
  with pytest.raises(TypeError):
    len(synthetic.SyntheticTextDataset('train', (32, 128)))


def test_bad_split_and_tiny_canvas():
  with pytest.raises(ValueError, match='unknown split'):
    synthetic.SyntheticTextDataset('test')
  with pytest.raises(ValueError, match='too small'):
    synthetic.make_example(0, 'train', (6, 8))


def test_missing_fonts_error_names_the_package(tmp_path, monkeypatch, fresh_font_cache):
  with pytest.raises(synthetic.FontsNotFoundError, match='fonts-dejavu-core'):
    synthetic.find_fonts([tmp_path])
  monkeypatch.setattr(synthetic, 'font_search_dirs', lambda: [tmp_path])
  with pytest.raises(FileNotFoundError, match='apt-get install -y fonts-dejavu-core'):
    synthetic.make_example(0, 'train', (32, 128))


def test_missing_faces_fall_back(tmp_path, fresh_font_cache):
  sans = synthetic.find_fonts()['sans']
  shutil.copy(sans, tmp_path / 'DejaVuSans.ttf')
  found = synthetic.find_fonts([tmp_path])
  assert set(found) == {s for s, _, _ in synthetic._FONT_STYLES}
  assert set(found.values()) == {tmp_path / 'DejaVuSans.ttf'}


def test_variety_narrows_words_fonts_and_backgrounds():
  v = synthetic.Variety(max_words=1, fonts=('mono',), backgrounds=('solid',))
  ds = synthetic.SyntheticTextDataset('train', (32, 128), seed=3, variety=v)
  examples = [ds[i] for i in range(40)]
  assert all(len(e.targets) == 1 for e in examples)
  assert {e.meta['font'] for e in examples} == {'mono'}
  assert {e.meta['background'] for e in examples} == {'solid'}
  # The full variety draws two-word prompts, other faces and backgrounds.
  full = [
    synthetic.SyntheticTextDataset('train', (32, 128), seed=3)[i] for i in range(40)
  ]
  assert any(len(e.targets) == 2 for e in full)
  assert len({e.meta['font'] for e in full}) > 1
  assert len({e.meta['background'] for e in full}) > 1
  # Prompts without rendering agree with the narrowed dataset.
  assert [p.prompt for p in ds.prompts(40)] == [e.prompt for e in examples]


def test_variety_from_config_and_errors():
  import ml_collections

  c = ml_collections.ConfigDict({'max_words': 2, 'fonts': (), 'backgrounds': ()})
  assert synthetic.Variety.from_config(c) == synthetic.FULL
  with pytest.raises(ValueError, match='data.max_words must be 1 or 2'):
    synthetic.Variety(max_words=3)
  with pytest.raises(ValueError, match=r"data.fonts: unknown \['comic'\]"):
    synthetic.Variety(fonts=('comic',))
  with pytest.raises(ValueError, match='data.backgrounds is empty'):
    synthetic.Variety(backgrounds=())
  with pytest.raises(ValueError, match="data.placement must be one of .* got 'left'"):
    synthetic.Variety(placement='left')
  c.placement = 'centered'
  assert synthetic.Variety.from_config(c).placement == 'centered'


@pytest.mark.parametrize('max_words', [1, 2])
def test_centered_placement_one_size_per_font_and_centred(max_words):
  v = synthetic.Variety(
    max_words=max_words, fonts=('mono', 'mono-bold'), placement='centered'
  )
  ds = synthetic.SyntheticTextDataset('train', (40, 160), seed=1, variety=v)
  examples = [ds[i] for i in range(24)]
  # Monospaced capitals all fit at the size of the longest word(s): one size
  # per layout.
  sizes = {}
  for e in examples:
    sizes.setdefault(e.meta['layout'], set()).add(e.meta['font_size'])
  assert all(len(s) == 1 for s in sizes.values()), sizes
  for e in examples:
    assert e.meta['placement'] == 'centered' and e.meta['align'] == 'center'
    x0 = min(b[0] for b in e.boxes)
    x1 = max(b[2] for b in e.boxes)
    # Ink is centred up to the glyphs' side bearings (a few px at 32 px).
    assert abs((x0 + x1) / 2 - 80) <= 3, (e.targets, e.boxes)
  # Same length, same font: same columns, whatever the letters.
  by_key = {}
  for e in examples:
    if len(e.targets) == 1:
      by_key.setdefault((len(e.targets[0]), e.meta['font']), []).append(e.boxes[0])
  spans = [b for b in by_key.values() if len(b) > 1]
  assert spans
  for boxes in spans:
    assert max(b[0] for b in boxes) - min(b[0] for b in boxes) <= 4
  # Proportional faces: long words too wide for the common size shrink.
  wide = synthetic.render_words(
    ['WWWWWWWW'],
    (40, 160),
    np.random.default_rng(0),
    variety=synthetic.Variety(fonts=('sans',), placement='centered'),
  )
  short = synthetic.render_words(
    ['TOP'],
    (40, 160),
    np.random.default_rng(0),
    variety=synthetic.Variety(fonts=('sans',), placement='centered'),
  )
  assert wide[2]['font_size'] < short[2]['font_size']
  assert wide[1][0][0] >= 0 and wide[1][0][2] <= 160
