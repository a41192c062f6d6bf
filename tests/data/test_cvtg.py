"""CVTG-2K reader: layout, options, ordering and every malformed-input case."""

import json

import pytest

from tests.data.cvtg_fixture import (
  cvtg_entry,
  make_cvtg_fixture,
  write_bytes,
  write_json,
)
from varrl_jax.data import cvtg


def test_reads_the_official_layout(tmp_path):
  written = make_cvtg_fixture(tmp_path, n_per_file=2)
  examples = cvtg.load_cvtg(tmp_path)
  assert len(examples) == 2 * 4 * 2
  assert [(e.subset, e.regions, e.index) for e in examples[:3]] == [
    ('CVTG', 2, 0),
    ('CVTG', 2, 1),
    ('CVTG', 3, 0),
  ]
  assert examples[-1].key == 'CVTG-Style/5/1'

  ex = examples[2]  # CVTG/3.json, index 0
  entry = written['CVTG/3.json'][0]
  assert ex.prompt == entry['prompt']
  assert ex.carriers == ('sign', 'poster', 'banner')
  assert ex.sentences == tuple(entry['sentence_list'])
  assert ex.targets == ('Open Bakery', 'Fresh Market', 'Grand Sale')
  assert len(ex.targets) == ex.regions


def test_examples_are_frozen(tmp_path):
  make_cvtg_fixture(tmp_path, n_per_file=1)
  ex = cvtg.load_cvtg(tmp_path)[0]
  with pytest.raises(AttributeError):
    ex.index = 3


def test_subset_region_and_count_options(tmp_path):
  make_cvtg_fixture(tmp_path, n_per_file=3)
  examples = cvtg.load_cvtg(tmp_path, subsets=['CVTG-Style'], regions=[4, 2])
  assert [(e.subset, e.regions) for e in examples] == [('CVTG-Style', 2)] * 3 + [
    ('CVTG-Style', 4)
  ] * 3
  assert [e.key for e in cvtg.load_cvtg(tmp_path, max_examples=4)] == [
    'CVTG/2/0',
    'CVTG/2/1',
    'CVTG/2/2',
    'CVTG/3/0',
  ]
  assert cvtg.load_cvtg(tmp_path, max_examples=0) == []


def test_only_requested_files_are_needed(tmp_path):
  make_cvtg_fixture(tmp_path, subsets=['CVTG'], regions=[3])
  assert len(cvtg.load_cvtg(tmp_path, subsets=['CVTG'], regions=[3])) == 2


def test_lowercase_style_folder(tmp_path):
  make_cvtg_fixture(tmp_path, style_dirname='CVTG-style')
  examples = cvtg.load_cvtg(tmp_path, subsets=['CVTG-Style'])
  assert {e.subset for e in examples} == {'CVTG-Style'}


def test_order_does_not_depend_on_file_order(tmp_path):
  make_cvtg_fixture(tmp_path, subsets=['CVTG'], regions=[2])
  write_json(
    tmp_path, 'CVTG/2.json', {'data_list': [cvtg_entry(i, 2) for i in (7, 3, 5)]}
  )
  examples = cvtg.load_cvtg(tmp_path, subsets=['CVTG'], regions=[2])
  assert [e.index for e in examples] == [3, 5, 7]
  assert examples == cvtg.load_cvtg(tmp_path, subsets=['CVTG'], regions=[2])


def test_extra_keys_and_combined_files_are_ignored(tmp_path):
  make_cvtg_fixture(tmp_path, subsets=['CVTG'], regions=[2])
  entry = dict(cvtg_entry(0, 2), extra='ignored')
  write_json(tmp_path, 'CVTG/2.json', {'data_list': [entry], 'version': 1})
  write_json(tmp_path, 'CVTG/2_combined.json', {'0': 'not read'})
  assert len(cvtg.load_cvtg(tmp_path, subsets=['CVTG'], regions=[2])) == 1


def test_targets_from_sentences(tmp_path):
  make_cvtg_fixture(tmp_path, subsets=['CVTG'], regions=[2])
  from_prompt = cvtg.load_cvtg(tmp_path, subsets=['CVTG'], regions=[2])
  from_sentences = cvtg.load_cvtg(
    tmp_path, subsets=['CVTG'], regions=[2], target_source='sentences'
  )
  assert [e.targets for e in from_prompt] == [e.targets for e in from_sentences]

  # Plain sentences (no quotes) are targets as a whole.
  entry = dict(cvtg_entry(0, 2), sentence_list=['Open Late', " a sign with 'Sale' "])
  write_json(tmp_path, 'CVTG/2.json', {'data_list': [entry]})
  (ex,) = cvtg.load_cvtg(
    tmp_path, subsets=['CVTG'], regions=[2], target_source='sentences'
  )
  assert ex.targets == ('Open Late', 'Sale')


def test_quoted_texts():
  assert cvtg.quoted_texts("a 'Big Sale' and ' x ' and '' and 'open") == [
    'Big Sale',
    'x',
  ]


# --- missing files --------------------------------------------------------------


def test_missing_root(tmp_path):
  with pytest.raises(cvtg.DatasetMissingError) as e:
    cvtg.load_cvtg(tmp_path / 'nope')
  assert isinstance(e.value, FileNotFoundError)
  assert 'CVTG/{2,3,4,5}.json' in str(e.value)
  assert 'CVTG-Style/{2,3,4,5}.json' in str(e.value)


def test_missing_subset_folder(tmp_path):
  make_cvtg_fixture(tmp_path, subsets=['CVTG'])
  with pytest.raises(
    cvtg.DatasetMissingError, match=r'CVTG-Style/ not found.*expected ROOT/CVTG'
  ):
    cvtg.load_cvtg(tmp_path)


def test_missing_file(tmp_path):
  make_cvtg_fixture(tmp_path, regions=[2])
  with pytest.raises(
    cvtg.DatasetMissingError, match=r'CVTG/3\.json not found.*expected'
  ):
    cvtg.load_cvtg(tmp_path)


def test_bad_options(tmp_path):
  make_cvtg_fixture(tmp_path)
  with pytest.raises(ValueError, match='subsets'):
    cvtg.load_cvtg(tmp_path, subsets=['CVTG-Art'])
  with pytest.raises(ValueError, match='region'):
    cvtg.load_cvtg(tmp_path, regions=[0])
  with pytest.raises(ValueError, match='region'):
    cvtg.load_cvtg(tmp_path, regions=['3', 2])
  with pytest.raises(ValueError, match='max_examples'):
    cvtg.load_cvtg(tmp_path, max_examples=-1)
  with pytest.raises(ValueError, match='target_source'):
    cvtg.load_cvtg(tmp_path, target_source='carriers')


# --- malformed files ------------------------------------------------------------


def _load_bad(tmp_path):
  with pytest.raises(cvtg.DatasetError) as e:
    cvtg.load_cvtg(tmp_path)
  message = str(e.value)
  assert '\n' not in message
  assert message.startswith('CVTG/3.json: ')
  return message


@pytest.mark.parametrize(
  'data, expected',
  [
    (b'{"data_list": [\n  {"index": 0,,}\n]}', 'malformed JSON at line 2 column 15'),
    (b'{"data_list": []', 'malformed JSON at line 1'),
    (b'', 'malformed JSON at line 1 column 1'),
    (b'{"data_list": [{"prompt": "caf\xe9"}]}', 'not valid UTF-8 at byte 30'),
  ],
)
def test_unreadable_file(tmp_path, data, expected):
  make_cvtg_fixture(tmp_path)
  write_bytes(tmp_path, 'CVTG/3.json', data)
  assert expected in _load_bad(tmp_path)


@pytest.mark.parametrize(
  'top, expected',
  [
    ([], "top level must be an object with a 'data_list' field"),
    ({'data': []}, "top level must be an object with a 'data_list' field"),
    ({'data_list': {'0': {}}}, "'data_list' must be a list, got dict"),
  ],
)
def test_bad_top_level(tmp_path, top, expected):
  make_cvtg_fixture(tmp_path)
  write_json(tmp_path, 'CVTG/3.json', top)
  assert expected in _load_bad(tmp_path)


def _without(entry, field):
  return {k: v for k, v in entry.items() if k != field}


_GOOD = cvtg_entry(1, 3)


@pytest.mark.parametrize(
  'bad, expected',
  [
    (_without(_GOOD, 'prompt'), "(index 1): missing field 'prompt'"),
    (_without(_GOOD, 'carrier_list'), "(index 1): missing field 'carrier_list'"),
    (_without(_GOOD, 'sentence_list'), "(index 1): missing field 'sentence_list'"),
    (_without(_GOOD, 'index'), "data_list[1]: missing field 'index'"),
    (dict(_GOOD, index='1'), "data_list[1]: 'index' must be an integer, got str"),
    (dict(_GOOD, index=True), "data_list[1]: 'index' must be an integer, got bool"),
    (dict(_GOOD, prompt=5), "(index 1): 'prompt' must be a string, got int"),
    (dict(_GOOD, prompt='  '), "(index 1): 'prompt' is an empty string"),
    (
      dict(_GOOD, carrier_list='sign'),
      "'carrier_list' must be a list of strings, got str",
    ),
    (dict(_GOOD, carrier_list=['sign', '']), "'carrier_list'[1] is an empty string"),
    (
      dict(_GOOD, sentence_list="a 'x'"),
      "'sentence_list' must be a list of strings, got str",
    ),
    (dict(_GOOD, sentence_list=[]), "(index 1): 'sentence_list' is empty"),
    (
      dict(_GOOD, sentence_list=["a 'x'", 3]),
      "'sentence_list'[1] must be a string, got int",
    ),
    (dict(_GOOD, sentence_list=["a 'x'", '']), "'sentence_list'[1] is an empty string"),
    (
      dict(_GOOD, sentence_list=None),
      "'sentence_list' must be a list of strings, got NoneType",
    ),
    (['not', 'an', 'object'], 'data_list[1]: entry must be an object, got list'),
    (
      dict(_GOOD, index=0),
      'data_list[1] (index 0): duplicate index, also at data_list[0]',
    ),
  ],
)
def test_malformed_entry(tmp_path, bad, expected):
  make_cvtg_fixture(tmp_path)
  write_json(tmp_path, 'CVTG/3.json', {'data_list': [cvtg_entry(0, 3), bad]})
  message = _load_bad(tmp_path)
  assert 'data_list[1]' in message
  assert expected in message


def test_malformed_entry_in_style_subset_names_its_file(tmp_path):
  make_cvtg_fixture(tmp_path, style_dirname='CVTG-style')
  write_json(
    tmp_path, 'CVTG-style/5.json', {'data_list': [dict(_GOOD, sentence_list=[])]}
  )
  with pytest.raises(
    cvtg.DatasetError, match=r'^CVTG-style/5\.json: data_list\[0\] \(index 1\)'
  ):
    cvtg.load_cvtg(tmp_path)


def test_prompt_targets_need_quoted_text(tmp_path):
  """target_source='prompt' (the official scorer's rule) needs quoted spans."""
  make_cvtg_fixture(tmp_path)
  path = tmp_path / 'CVTG' / '3.json'
  data = json.loads(path.read_text())
  data['data_list'][1]['prompt'] = 'A sign saying Sale'
  path.write_text(json.dumps(data))
  with pytest.raises(
    cvtg.DatasetError, match="CVTG/3.json: .*no single-quoted target text in 'prompt'"
  ):
    cvtg.load_cvtg(tmp_path, target_source='prompt')
  # The default reads targets from sentence_list and does not need them.
  assert cvtg.load_cvtg(tmp_path)


def test_sentence_targets_keep_apostrophes_and_unquote_descriptions():
  assert cvtg.quoted_texts("Joe's Mom's", word_boundary=True) == []
  assert cvtg.quoted_texts(
    "a glass with 'Crime Scene' in bold.", word_boundary=True
  ) == ['Crime Scene']
