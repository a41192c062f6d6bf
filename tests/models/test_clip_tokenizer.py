"""Our CLIP BPE tokenizer gives the ids of transformers' and open_clip's."""

import gzip
import json

import numpy as np
import pytest

from tests.models import clip_fixture as fx
from varrl_jax.models.clip_tokenizer import ClipTokenizer, TokenizerFileError

PROMPTS = [
  *fx.PROMPTS,
  "A sign that reads 'OPEN' on a red door",
  'Neon   text "HELLO WORLD" 2024!!',
  'café naïve résumé — 東京 123',
  "it's the dog's toy; they're we've I'm you'll he'd",
  "Don't\tstop\n\nme  ",
  '',
  'a ' * 100,  # truncated: start, 75 ids, end
]


def _hf_reference(folder):
  from transformers import CLIPTokenizer

  return CLIPTokenizer.from_pretrained(folder)


def test_tiny_vocab_matches_transformers_and_open_clip(tmp_path):
  from open_clip.tokenizer import SimpleTokenizer

  fx.write_tiny_vocab(str(tmp_path))
  ours_hf = ClipTokenizer.from_hf(str(tmp_path))
  ours_oc = ClipTokenizer.from_open_clip(str(tmp_path / 'bpe.txt.gz'))
  hf = _hf_reference(str(tmp_path))
  ids = ours_hf(PROMPTS)
  assert ids.shape == (len(PROMPTS), 77) and ids.dtype == np.int32
  for row, prompt in zip(ids, PROMPTS):
    ref = hf(prompt, truncation=True, max_length=77)['input_ids']
    assert row[: len(ref)].tolist() == ref and not row[len(ref) :].any()
  np.testing.assert_array_equal(ours_oc(PROMPTS), ids)
  np.testing.assert_array_equal(
    SimpleTokenizer(str(tmp_path / 'bpe.txt.gz'))(PROMPTS), ids
  )
  # The merges are used: 'open' is one token, 'zebra' is letters.
  assert ids[0].tolist()[:3] == [
    ours_hf.start_id,
    ours_hf.vocab['a</w>'],
    ours_hf.vocab['sign</w>'],
  ]


def test_full_open_clip_vocab_matches_both_references(tmp_path):
  from open_clip.tokenizer import SimpleTokenizer, default_bpe

  ours = ClipTokenizer.from_open_clip(default_bpe())  # a file of the installed package
  assert len(ours.vocab) == 49408 and ours.end_id == 49407
  ref = SimpleTokenizer(default_bpe())
  assert ours.vocab == ref.encoder
  np.testing.assert_array_equal(ours(PROMPTS), ref(PROMPTS).numpy())
  # The same vocabulary as Hugging Face files.
  vocab = dict(ours.vocab)
  vocab['<|startoftext|>'] = vocab.pop('<start_of_text>')
  vocab['<|endoftext|>'] = vocab.pop('<end_of_text>')
  (tmp_path / 'vocab.json').write_text(json.dumps(vocab))
  merges = sorted(ours.ranks, key=ours.ranks.get)
  (tmp_path / 'merges.txt').write_text(
    '#version: 0.2\n' + '\n'.join(f'{a} {b}' for a, b in merges) + '\n'
  )
  hf = _hf_reference(str(tmp_path))
  ids = ClipTokenizer.from_hf(str(tmp_path))(PROMPTS)
  for row, prompt in zip(ids, PROMPTS):
    ref_ids = hf(prompt, truncation=True, max_length=77)['input_ids']
    assert row[: len(ref_ids)].tolist() == ref_ids


def test_bad_files_are_one_line(tmp_path):
  with pytest.raises(TokenizerFileError, match=f'{tmp_path}/vocab.json: no such file'):
    ClipTokenizer.from_hf(str(tmp_path))
  with pytest.raises(TokenizerFileError, match=f'{tmp_path}/x.gz: no such file'):
    ClipTokenizer.from_path(str(tmp_path / 'x.gz'))
  (tmp_path / 'bad.gz').write_bytes(b'not gzip')
  with pytest.raises(TokenizerFileError, match='bad.gz: not a gzipped BPE merges file'):
    ClipTokenizer.from_open_clip(str(tmp_path / 'bad.gz'))
  with gzip.open(tmp_path / 'm.gz', 'wt') as f:
    f.write('header\na b c\n')
  with pytest.raises(
    TokenizerFileError, match="m.gz: merge 0 is not two symbols: 'a b c'"
  ):
    ClipTokenizer.from_open_clip(str(tmp_path / 'm.gz'))
