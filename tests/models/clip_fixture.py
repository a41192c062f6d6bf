"""Tiny random CLIP models saved by the reference libraries, and a tiny BPE vocab.

`hf_tiny` saves a Hugging Face ``CLIPModel`` (safetensors) with tokenizer
files; `open_clip_tiny` saves an open_clip ``CLIP`` state dict, its model
config JSON and a gzipped merges file. Every parameter is perturbed from its
init (LayerNorm scales off 1, biases off 0), so a swapped or transposed
weight shows in the outputs.
"""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import torch

from varrl_jax.models.clip_tokenizer import byte_symbols

WORDS = 'a sign that reads open on the red door hello world neon text cafe'.split()
PROMPTS = [
  "a sign that reads 'OPEN' on the red door",
  'Neon text "HELLO WORLD"!!',
  "the cafe's door, 2024",
  'zebra',
]


def tiny_merges(words=WORDS) -> list[tuple[str, str]]:
  """Left-to-right merges that make each word one token."""
  merges = []
  for w in words:
    symbols = list(w[:-1]) + [w[-1] + '</w>']
    while len(symbols) > 1:
      pair = (symbols[0], symbols[1])
      if pair not in merges:
        merges.append(pair)
      symbols = [symbols[0] + symbols[1], *symbols[2:]]
  return merges


def write_tiny_vocab(folder: str) -> int:
  """vocab.json + merges.txt (Hugging Face) and bpe.txt.gz (open_clip) of the
  same vocabulary into ``folder``; returns the vocabulary size."""
  os.makedirs(folder, exist_ok=True)
  merges = tiny_merges()
  symbols = sorted(byte_symbols(), key=lambda s: (ord(s) >= 256, ord(s)))
  tokens = symbols + [s + '</w>' for s in symbols] + [a + b for a, b in merges]
  tokens += ['<|startoftext|>', '<|endoftext|>']
  with open(os.path.join(folder, 'vocab.json'), 'w', encoding='utf-8') as f:
    json.dump({t: i for i, t in enumerate(tokens)}, f)
  lines = ['#version: 0.2'] + [f'{a} {b}' for a, b in merges]
  with open(os.path.join(folder, 'merges.txt'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  with gzip.open(os.path.join(folder, 'bpe.txt.gz'), 'wt', encoding='utf-8') as f:
    # No final newline: open_clip would read the empty last line as a merge.
    f.write('\n'.join(lines))
  return len(tokens)


def _perturb(model: torch.nn.Module, seed: int) -> None:
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('logit_scale'):
        p.fill_(2.3)
      else:
        p.add_(0.05 * torch.randn(p.shape, generator=g))


def hf_tiny(folder: str, act: str = 'quick_gelu', legacy_eos: bool = False):
  """A tiny ``CLIPModel`` saved to ``folder``; returns the torch model."""
  from transformers import CLIPConfig, CLIPModel

  vocab = write_tiny_vocab(folder)
  text = dict(
    vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=77, hidden_act=act,
    bos_token_id=vocab - 2, eos_token_id=2 if legacy_eos else vocab - 1,
  )  # fmt: skip
  vision = dict(
    hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=3,
    image_size=32, patch_size=8, hidden_act=act,
  )  # fmt: skip
  torch.manual_seed(0)
  model = CLIPModel(
    CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
  )
  _perturb(model, 1)
  model.eval()
  model.save_pretrained(folder, safe_serialization=True)
  return model


OPEN_CLIP_CFG = {
  'embed_dim': 16,
  'vision_cfg': {
    'image_size': 32,
    'layers': 2,
    'width': 32,
    'patch_size': 8,
    'head_width': 8,
  },
  'text_cfg': {'context_length': 77, 'width': 24, 'heads': 4, 'layers': 2},
}


def open_clip_tiny(folder: str, quick_gelu: bool = False, nest: bool = True):
  """A tiny open_clip ``CLIP``: ``folder/model.pt`` (under 'state_dict' when
  ``nest``, as HPS-v2 saves it), ``folder/model.json``, ``folder/bpe.txt.gz``.
  Returns the torch model."""
  from open_clip.model import CLIP

  vocab = write_tiny_vocab(folder)
  cfg = json.loads(json.dumps(OPEN_CLIP_CFG))
  cfg['text_cfg']['vocab_size'] = vocab
  cfg['quick_gelu'] = quick_gelu
  torch.manual_seed(0)
  model = CLIP(
    cfg['embed_dim'], cfg['vision_cfg'], cfg['text_cfg'], quick_gelu=quick_gelu
  )
  _perturb(model, 2)
  model.eval()
  state = model.state_dict()
  torch.save({'state_dict': state, 'epoch': 3} if nest else state, f'{folder}/model.pt')
  with open(os.path.join(folder, 'model.json'), 'w') as f:
    json.dump(cfg, f)
  return model


def random_pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
  """Normalised-looking pixels float32 [n, size, size, 3]."""
  return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)
