"""Agreement of two OCR engines on the same evaluation images."""

import json

import numpy as np
import pytest

from varrl_jax.experiments import ocr_agreement


def _write(folder, correct, words, weights='ckpt', keys=None):
  folder.mkdir()
  keys = keys or [f'k{i}' for i in range(len(correct))]
  recs = [
    {'key': k, 'n_correct': c, 'n_words': w, 'similarity': c + 0.5 * (w - c)}
    for k, c, w in zip(keys, correct, words)
  ]
  (folder / 'samples.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in recs))
  (folder / 'metrics.json').write_text(json.dumps({'weights': weights, 'seed': 1}))
  return str(folder)


def test_kappa():
  a = np.array([1, 1, 0, 0], bool)
  assert ocr_agreement.kappa(a, a) == 1.0
  # Observed 0.5 = chance 0.5.
  assert ocr_agreement.kappa(a, np.array([1, 0, 1, 0], bool)) == pytest.approx(0.0)
  assert ocr_agreement.kappa(a, ~a) == pytest.approx(-1.0)


def test_agreement_figures_and_cli(tmp_path, capsys):
  a = _write(tmp_path / 'a', [1, 0, 2, 1], [1, 1, 2, 2])
  b = _write(tmp_path / 'b', [1, 1, 2, 0], [1, 1, 2, 2])
  out = tmp_path / 'agree.json'
  assert ocr_agreement.main([a, b, f'--out={out}']) == 0
  rec = json.loads(out.read_text())
  assert rec['word_accuracy_a'] == pytest.approx(4 / 6)
  assert rec['word_accuracy_b'] == pytest.approx(4 / 6)
  assert rec['wa_b_minus_a'][0] == pytest.approx(0.0)
  assert rec['same_count_share'] == pytest.approx(0.5)
  # all-right per image: a [T, F, T, F], b [T, T, T, F]: observed 0.75,
  # chance 0.5 * 0.75 + 0.5 * 0.25 = 0.5.
  assert rec['all_right_kappa'] == pytest.approx(0.5)
  assert rec['ned_a'] == pytest.approx((1 + 0.5 + 2 + 1.5) / 6)
  assert 'same count 0.500' in capsys.readouterr().out


def test_other_images_are_refused(tmp_path, capsys):
  a = _write(tmp_path / 'a', [1], [1])
  b = _write(tmp_path / 'b', [1], [1], keys=['other'])
  assert ocr_agreement.main([a, b]) == 2
  assert 'keys differ' in capsys.readouterr().err
  c = _write(tmp_path / 'c', [1], [1], weights='another')
  assert ocr_agreement.main([a, c]) == 2
  assert 'other weights or seeds' in capsys.readouterr().err
  assert ocr_agreement.main([a]) == 2
  assert '1 folders given, 2 or 4 needed' in capsys.readouterr().err
  assert ocr_agreement.main([a, a, '--out', 'x.json']) == 2
  assert 'error: unknown flag --out' in capsys.readouterr().err
  d = _write(tmp_path / 'd', [1], [2])
  assert ocr_agreement.main([a, d]) == 2
  assert 'other target words' in capsys.readouterr().err


def test_the_run_difference_under_two_engines(tmp_path, capsys):
  r1e1 = _write(tmp_path / 'r1e1', [1, 0, 0, 0], [1, 1, 1, 1])
  r2e1 = _write(tmp_path / 'r2e1', [1, 1, 1, 0], [1, 1, 1, 1])
  r1e2 = _write(tmp_path / 'r1e2', [1, 1, 0, 0], [1, 1, 1, 1])
  r2e2 = _write(tmp_path / 'r2e2', [1, 1, 1, 0], [1, 1, 1, 1])
  out = tmp_path / 'diff.json'
  assert ocr_agreement.main([r1e1, r2e1, r1e2, r2e2, f'--out={out}']) == 0
  rec = json.loads(out.read_text())
  assert rec['runs_engine1'][0] == pytest.approx(0.5)
  assert rec['runs_engine2'][0] == pytest.approx(0.25)
  assert rec['gap'] == pytest.approx(-0.25)
  assert 'engine gap of the difference -0.2500' in capsys.readouterr().out
