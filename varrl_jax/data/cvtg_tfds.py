"""TFDS builder for CVTG-2K (optional extra ``tfds``: tensorflow-datasets, array_record).

Reads a local copy through :func:`varrl_jax.data.cvtg.load_cvtg`; nothing is
downloaded. Building and reading need no TensorFlow with
``file_format='array_record'`` and :func:`tfds.data_source` (random access,
as grain expects)::

  builder = build('/data/CVTG-2K', data_dir='/data/tfds')
  source = data_source('/data/tfds')          # split 'test', 2,000 records
  record = source[0]                          # dict of numpy values / bytes

One split, ``test`` (CVTG-2K is a benchmark), with every subset and region
count; ``subset`` and ``regions`` are features so breakdowns stay possible.
TFDS stores records in its own (hashed-key) order: sort by ``key`` when the
order matters. Text features come back as ``bytes`` without TensorFlow.

Only this module imports ``tensorflow_datasets``; nothing else in the package
imports this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from varrl_jax.data import cvtg


class Cvtg2k(tfds.core.GeneratorBasedBuilder):
  """CVTG-2K prompts with their target texts (registered as ``cvtg2k``)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Prompts, carriers, sentences and quoted targets.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Download CVTG-2K.zip from the CVTG-2K release (TextCrafter, '
    'NJU-PCALab) and unzip it so that the manual folder holds '
    'CVTG/{2,3,4,5}.json and CVTG-Style/{2,3,4,5}.json (CVTG-style is also '
    'accepted). Pass that folder as manual_dir, e.g. '
    'build(root, data_dir) or DownloadConfig(manual_dir=root).'
  )

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo directly: dataset_info_from_configs() wants metadata files
    # next to the module, which a library module does not ship.
    text = tfds.features.Text()
    return tfds.core.DatasetInfo(
      builder=self,
      description='CVTG-2K: complex visual text generation benchmark (2,000 prompts).',
      features=tfds.features.FeaturesDict(
        {
          'key': text,
          'subset': text,
          'regions': np.int32,
          'index': np.int32,
          'prompt': text,
          'carriers': tfds.features.Sequence(text),
          'sentences': tfds.features.Sequence(text),
          'targets': tfds.features.Sequence(text),
        }
      ),
      homepage='https://github.com/NJU-PCALab/TextCrafter',
      citation='@article{du2025textcrafter, title={TextCrafter: Accurately '
      'Rendering Multiple Texts in Complex Visual Scenes}, author={Du, Nikai '
      'and others}, journal={arXiv preprint arXiv:2503.23461}, year={2025}}',
    )

  def _split_generators(
    self, dl_manager: tfds.download.DownloadManager
  ) -> dict[str, Iterator[tuple[str, dict[str, Any]]]]:
    return {'test': self._generate_examples(os.fspath(dl_manager.manual_dir))}

  def _generate_examples(self, root: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for ex in cvtg.load_cvtg(root):
      yield (
        ex.key,
        {
          'key': ex.key,
          'subset': ex.subset,
          'regions': ex.regions,
          'index': ex.index,
          'prompt': ex.prompt,
          'carriers': list(ex.carriers),
          'sentences': list(ex.sentences),
          'targets': list(ex.targets),
        },
      )


def build(
  root: str | os.PathLike[str],
  data_dir: str | os.PathLike[str],
  *,
  file_format: str = 'array_record',
) -> Cvtg2k:
  """Builds (once) the ``cvtg2k`` dataset from the local copy at ``root``.

  Raises :class:`~varrl_jax.data.cvtg.DatasetMissingError` when ``root`` is
  not a folder (TFDS's own check would only say "missing or empty").
  """
  if not os.path.isdir(root):
    raise cvtg.DatasetMissingError(
      f'CVTG-2K root {os.fspath(root)} is not a folder: {cvtg.LAYOUT}'
    )
  builder = Cvtg2k(data_dir=os.fspath(data_dir), file_format=file_format)
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(root))
  )
  return builder


def data_source(
  data_dir: str | os.PathLike[str], split: str = 'test'
) -> Sequence[dict[str, Any]]:
  """Random-access source of a built ``cvtg2k`` (array_record), no TensorFlow."""
  return tfds.data_source('cvtg2k', split=split, data_dir=os.fspath(data_dir))
