r"""Public checkpoints -> our orbax checkpoint (``--config.init_checkpoint``).

  python -m varrl_jax.convert --family=var --vae=vae_ch160v4096z32.pth \
      --transformer=var_d16.pth --out=ckpt/var_d16
  python -m varrl_jax.convert --family=infinity \
      --transformer=infinity_2b_reg.pth --vae=infinity_vae_d32reg.pth \
      --text_encoder=flan-t5-xl --out=ckpt/infinity_2b
  python -m varrl_jax.convert --family=infinity \
      --transformer=infinity_8b_weights \
      --vae=infinity_vae_d56_f8_14_patchify.pth \
      --text_encoder=flan-t5-xl --out=ckpt/infinity_8b

Reads the PyTorch files without torch (`torch_io`: ``.pth`` zip archives,
``.safetensors``, sharded ``*.index.json`` or the folder holding one),
infers the model's config from their shapes (or takes ``--config``, e.g.
``configs/var.py:16``, ``configs/infinity_2b.py``), maps every
key strictly (a missing, unexpected or wrong-shaped key is one ``error:``
line naming the file and the key, exit 2) and writes the checkpoint with a
manifest: the family, each source file's path, size and SHA-256 (every
shard of a sharded checkpoint, every file of the text encoder's folder), the
config and the command. The directory is written next to ``--out`` and
renamed into place only when complete; an existing ``--out`` is never
touched. Afterwards nothing reads PyTorch files.

Infinity's Flan-T5 encoder (``--text_encoder``) is checked and recorded,
not copied: the converted config's ``model.infinity.text_encoder`` is the
folder's absolute path (the encoder is frozen, 4.9 GB, and loaded by
``models/t5_embedder.PromptEmbedder`` when prompts are first encoded).
"""

from __future__ import annotations

import os
import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from varrl_jax import checkpoint, cli
from varrl_jax.convert import torch_io
from varrl_jax.convert.official import FAMILIES, convert

_FAMILY = flags.DEFINE_enum('family', None, FAMILIES, 'Model family of the files.')
_VAE = flags.DEFINE_string(
  'vae', None, 'The tokenizer checkpoint (.pth / .safetensors).'
)
_TRANSFORMER = flags.DEFINE_string(
  'transformer',
  None,
  'The transformer checkpoint (.pth / .safetensors / *.index.json, or a folder '
  'holding one).',
)
_TEXT_ENCODER = flags.DEFINE_string(
  'text_encoder',
  None,
  'infinity: the Flan-T5 folder (config.json, weights, spiece.model); recorded '
  'in the config, not copied.',
)
_OUT = flags.DEFINE_string('out', None, 'Output checkpoint directory (must not exist).')
_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Optional config to convert into (default: inferred from shapes).'
)


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  command = shlex.join(['python', '-m', 'varrl_jax.convert', *sys.argv[1:]])
  try:
    manifest = convert(
      _FAMILY.value,
      _OUT.value,
      command,
      _CONFIG.value,
      vae=_VAE.value,
      transformer=_TRANSFORMER.value,
      text_encoder=_TEXT_ENCODER.value,
    )
  except (torch_io.CheckpointFileError, checkpoint.CheckpointError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  c = manifest['config']
  sizes = c['model'][manifest['family']]
  name = sizes.get('preset') or f'depth {sizes["depth"]}'
  print(
    f'converted {manifest["family"]} ({name}, {tuple(c["image_size"])}) -> '
    f'{os.path.abspath(_OUT.value)}'
  )
  print(f'use it with --config.init_checkpoint={os.path.abspath(_OUT.value)}')
  if manifest['family'] == 'infinity':
    # Runs read the prompts' encoder from their own config, not the manifest.
    print(
      'and --config.model.infinity.text_encoder='
      f'{c["model"]["infinity"]["text_encoder"]}'
    )


if __name__ == '__main__':
  flags.mark_flags_as_required(['family', 'out'])
  app.run(main, flags_parser=cli.parse_flags)
