"""MP x K summaries of a run's metrics.jsonl and the K comparison figure."""

import json

import numpy as np
import pytest

from varrl_jax.experiments import mp_overlap


def _line(step, prefix, **values):
  rec = {'step': step, 'phase/prefix': float(prefix), 'reward/mean': 0.5}
  rec.update({k.replace('__', '/'): v for k, v in values.items()})
  return json.dumps(rec)


def _write(tmp_path, lines):
  (tmp_path / 'metrics.jsonl').write_text('\n'.join(lines) + '\n')
  return str(tmp_path)


def test_summarize_means_over_prefix_updates_last_write_wins(tmp_path):
  def prefix(step, cov, ov):
    return _line(
      step,
      1,
      **{
        'mp__scale0__coverage': 1.0,
        'mp__scale1__coverage': cov,
        'mp__scale0__branch_coverage': 1.0,
        'mp__scale1__branch_coverage': cov / 2,
        'mp__scale0__overlap': 1.0,
        'mp__scale1__overlap': ov,
        'mp__scale0__pair_overlap': 1.0,
        'mp__scale1__pair_overlap': ov,
        'mask__branches_with_boxes': cov,
      },
    )

  run = _write(
    tmp_path,
    [
      prefix(0, 0.9, 0.9),  # replaced by the resumed run's step 0 below
      prefix(1, 0.4, 0.2),
      prefix(0, 0.2, 0.6),
      _line(2, 0, **{'mp__scale0__coverage': 1.0, 'mp__scale1__coverage': 0.3}),
      # No row marked scale 1: the overlap is left out of that update's record.
      _line(
        3,
        1,
        **{
          'mp__scale0__coverage': 1.0,
          'mp__scale1__coverage': 0.0,
          'mp__scale0__overlap': 1.0,
        },
      ),
      json.dumps({'step': 4, 'eval/wa': 0.3}),  # no mp/ key: not an update record
      '{"step": 5, "mp/sca',  # torn last line
    ],
  )
  s = mp_overlap.summarize(run, grids=[1, (2, 2)])  # config.scales style
  assert s['prefix_updates'] == 3 and s['other_updates'] == 1
  assert s['coverage'] == pytest.approx([1.0, (0.2 + 0.4 + 0.0) / 3])
  assert s['overlap'] == pytest.approx([1.0, (0.6 + 0.2) / 2])
  assert s['branch_coverage'] == pytest.approx([1.0, 0.3 / 2])
  assert s['suffix_coverage'] == pytest.approx([1.0, 0.3])
  assert s['branches_with_boxes'] == pytest.approx(0.3)
  assert s['grids'] == [[1, 1], [2, 2]]
  json.dumps(s, allow_nan=False)  # a record.json field
  with pytest.raises(ValueError, match='3 grids for 2 scales'):
    mp_overlap.summarize(run, grids=[(1, 1), (2, 2), (4, 4)])


def test_summarize_without_mp_stats_is_empty(tmp_path):
  assert mp_overlap.summarize(str(tmp_path)) == {}
  assert mp_overlap.summarize(_write(tmp_path, [_line(0, 1)])) == {}


def _stats(cov, ov):
  return {
    'coverage': [1.0, cov],
    'branch_coverage': [1.0, cov / 2],
    'overlap': [1.0, ov],
    'pair_overlap': [1.0, None],
    'grids': [[1, 1], [2, 2]],
  }


def test_figure_writes_a_png_with_seed_means(tmp_path, monkeypatch):
  import matplotlib.axes

  drawn = []
  real = matplotlib.axes.Axes.errorbar

  def spy(self, x, y, yerr=None, **kw):
    drawn.append((kw['label'], np.asarray(y), yerr))
    return real(self, x, y, yerr=yerr, **kw)

  monkeypatch.setattr(matplotlib.axes.Axes, 'errorbar', spy)
  records = {
    'K2': [{'mp_stats': _stats(0.4, 0.5)}, {'mp_stats': _stats(0.6, 0.7)}],
    'K4': [_stats(0.8, 0.1)],  # a summarize() dict is accepted as well
  }
  path = mp_overlap.figure(records, str(tmp_path / 'mp.png'))
  assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  by_label = {label: (y, err) for label, y, err in drawn}
  y, err = by_label['K2 all K (n=2)']
  np.testing.assert_allclose(y, [1.0, 0.6])
  np.testing.assert_allclose(err, [0.0, np.std([0.5, 0.7], ddof=1)])
  assert by_label['K4 (n=1)'][1] is None  # one seed: no error bars
  np.testing.assert_allclose(by_label['K4 (n=1)'][0], [1.0, 0.8])
  assert np.isnan(by_label['K4 two branches (n=1)'][0][1])
  with pytest.raises(ValueError, match="run 'K8' has no 'mp_stats'"):
    mp_overlap.figure({'K8': [{'mp_stats': {}}]}, str(tmp_path / 'x.png'))
