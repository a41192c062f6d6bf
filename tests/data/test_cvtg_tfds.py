"""TFDS builder: build array_record files from the fixture, read them back without TF."""

import pytest

pytest.importorskip(
  'tensorflow_datasets',
  reason='optional extra "tfds" (tensorflow-datasets) not installed',
)
pytest.importorskip(
  'array_record', reason='optional extra "tfds" (array_record) not installed'
)

from tests.data.cvtg_fixture import make_cvtg_fixture  # noqa: E402
from varrl_jax.data import cvtg, cvtg_tfds  # noqa: E402


def test_build_and_read_back(tmp_path):
  root = tmp_path / 'CVTG-2K'
  make_cvtg_fixture(root, n_per_file=2)
  builder = cvtg_tfds.build(root, tmp_path / 'tfds')
  assert builder.info.splits['test'].num_examples == 16

  source = cvtg_tfds.data_source(tmp_path / 'tfds')
  assert len(source) == 16
  records = sorted((source[i] for i in range(len(source))), key=lambda r: r['key'])

  expected = sorted(cvtg.load_cvtg(root), key=lambda e: e.key)
  for record, ex in zip(records, expected, strict=True):
    # Without TensorFlow, text features come back as bytes.
    assert record['key'].decode() == ex.key
    assert record['subset'].decode() == ex.subset
    assert int(record['regions']) == ex.regions
    assert int(record['index']) == ex.index
    assert record['prompt'].decode() == ex.prompt
    assert tuple(t.decode() for t in record['targets']) == ex.targets
    assert tuple(t.decode() for t in record['carriers']) == ex.carriers
    assert tuple(t.decode() for t in record['sentences']) == ex.sentences


def test_malformed_file_fails_the_build(tmp_path):
  root = tmp_path / 'CVTG-2K'
  make_cvtg_fixture(root, n_per_file=1)
  (root / 'CVTG' / '4.json').write_text('{"data_list": [}')
  with pytest.raises(cvtg.DatasetError, match=r'^CVTG/4\.json: malformed JSON'):
    cvtg_tfds.build(root, tmp_path / 'tfds')


def test_missing_manual_dir_names_the_layout(tmp_path):
  with pytest.raises(cvtg.DatasetMissingError, match=r'CVTG/\{2,3,4,5\}\.json'):
    cvtg_tfds.build(tmp_path / 'absent', tmp_path / 'tfds')
