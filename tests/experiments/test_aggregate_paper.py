"""The paper's numbers in the ablation tables: in a run's columns only at its setting."""

import glob
import json
import os

from varrl_jax.experiments import aggregate, studies

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _record(study, run, seed=0):
  return {
    'study': study,
    'run': run,
    'seed': seed,
    'overrides': {'rl.mode': 'full', 'seed': seed, 'rl.num_updates': 4},
    'budget_updates': 4,
    'word_accuracy_before': 0.1,
    'word_accuracy_after': 0.2,
    'ned_before': 0.5,
    'ned_after': 0.6,
    'wall_seconds': 60.0,
  }


def _table(study, runs):
  records = [_record(study, r) for r in runs]
  return aggregate.markdown(study, aggregate.aggregate(records, tuple(runs)), records)


def _row(md, run):
  (line,) = [x for x in md.splitlines() if x.startswith(f'| {run} |')]
  return line


def test_table4a_paper_columns_hold_the_paper_rows_of_the_same_components():
  md = _table('table4a', ['vanilla', 'vmr', 'vmr+panw', 'vmr+panw+mp'])
  assert _row(md, 'vmr+panw').endswith('| 0.6855 | 0.8601 |')
  assert _row(md, 'vmr+panw+mp').endswith('| 0.7071 | 0.8699 |')
  # The main-table numbers are not Table 4a rows: no run's columns carry them.
  assert _row(md, 'vanilla').endswith('| n/a | n/a |')
  assert _row(md, 'vmr').endswith('| n/a | n/a |')
  paper = md.split('Paper:')[1]
  assert '| vanilla GRPO baseline | main result (CVTG-2K) | 0.5536 | 0.7816 |' in paper
  assert '| full method | main result (CVTG-2K) | 0.7841 | 0.9081 |' in paper


def test_table3b_alpha_values_and_settings_the_paper_did_not_share():
  md = _table('table3b', ['alpha0', 'alpha0.6', 'alpha0.8'])
  assert _row(md, 'alpha0.6').endswith('| 0.7136 | n/a |')
  assert _row(md, 'alpha0.8').endswith('| n/a | n/a |')  # a CLIPScore only
  assert '| alpha = 0.8 | Table 3b | n/a | n/a | 0.8172 | alpha0.8 |' in md
  # Our m64 / m96 and the scaled coarse schedule are not the paper's settings.
  for study, runs in (('table3a', ['m64', 'm96']), ('table4b', ['fine', 'coarse'])):
    md = _table(study, runs)
    assert all(_row(md, r).endswith('| n/a | n/a |') for r in runs)
    assert 'No values given' in md and 'arXiv 2601.02256' in md
  assert 'K = 2 is best' in _table('table5', ['K1', 'K2', 'K4'])


def test_every_paper_entry_names_a_run_of_its_study_or_none():
  for study, entries in aggregate.PAPER.items():
    names = {name for name, _ in studies.variants(study, None, 60)}
    for e in entries:
      assert e.run is None or e.run in names, (study, e)
      assert (e.wa, e.ned, e.clipscore) != (None, None, None), (study, e)


def test_committed_records_render_the_paper_value_in_the_report():
  # The tables of docs/results_tiny.md come from these records (`--report`).
  paths = glob.glob(
    os.path.join(ROOT, 'docs', 'ablations', 'tiny', 'table3b', '*', '*', '*')
  )
  records = []
  for p in sorted(paths):
    with open(p) as f:
      records.append(json.load(f))
  md = aggregate.markdown('table3b', aggregate.aggregate(records), records)
  assert _row(md, 'alpha0.6').endswith('| 0.7136 | n/a |')
  with open(os.path.join(ROOT, 'docs', 'results_tiny.md')) as f:
    assert _row(md, 'alpha0.6') in f.read()


def test_testbed_tables_in_the_docs_are_the_reports_of_the_committed_records():
  """docs/results.md's testbed tables are `--report` of docs/ablations/small:
  each study's verdict rows and paired rows, rendered again from the records,
  appear there unchanged."""
  with open(os.path.join(ROOT, 'docs', 'results.md')) as f:
    doc = f.read()
  for study in ('table4a', 'table3a', 'table3b', 'table5'):
    records = aggregate.load_records(
      os.path.join(ROOT, 'docs', 'ablations', 'small'), study
    )
    assert records, study
    md = aggregate.markdown(study, aggregate.aggregate(records), records)
    rows = [line for line in md.splitlines() if line.startswith('| ')]
    assert len(rows) > 6, study
    for line in rows:
      assert line in doc, (study, line)
