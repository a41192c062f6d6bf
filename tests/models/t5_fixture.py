"""A tiny random Flan-T5-like encoder folder (Hugging Face layout + a
SentencePiece model trained here), for tests of the T5 encoder and of the
Infinity family's prompt conditioning. Needs torch, transformers and
sentencepiece (the test extras)."""

import io

import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
spm = pytest.importorskip('sentencepiece')

_CORPUS = """The quick brown fox jumps over the lazy dog.
A neon sign that says "OPEN 24 HOURS" above the door!
Hello, world: it's a test; (parentheses) and [brackets], 'single' "double".
A poster reading "SALE 50% OFF" on a shop window at night.
Numbers 0123456789 and symbols @#$%^&*+=<>?/|~ too.
""".splitlines()


def hf_config(**kw):
  base = dict(
    vocab_size=220,  # >= the tokenizer's 212 ids
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_layers=2,
    num_heads=4,
    feed_forward_proj='gated-gelu',
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    tie_word_embeddings=False,  # as Flan-T5
  )
  base.update(kw)
  return transformers.T5Config(**base)


def train_spiece(path):
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(_CORPUS * 10),
    model_writer=model,
    vocab_size=120,
    hard_vocab_limit=False,
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,  # T5's ids: <pad> 0, </s> 1, <unk> 2, no <s>
    character_coverage=1.0,
    num_threads=1,
    minloglevel=2,
  )
  with open(path, 'wb') as f:
    f.write(model.getvalue())


def make_folder(path, seed: int = 0, **config) -> str:
  """Saves a random T5EncoderModel (``config`` overrides `hf_config`) and a
  tokenizer to ``path``; returns it as a string."""
  torch.manual_seed(seed)
  transformers.T5EncoderModel(hf_config(**config)).eval().save_pretrained(path)
  train_spiece(path / 'spiece.model')
  return str(path)
