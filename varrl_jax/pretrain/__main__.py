r"""Command line of the pretraining stages (see the package docstring).

  python -m varrl_jax.pretrain --config=configs/tiny.py --stage=tokenizer \
      --workdir=workdir/pretrain
  python -m varrl_jax.pretrain --config=configs/tiny.py --stage=transformer \
      --workdir=workdir/pretrain
"""

from __future__ import annotations

import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from varrl_jax import checkpoint, cli
from varrl_jax.models.family import build_model
from varrl_jax.models.text import PromptError
from varrl_jax.pretrain import loop, tokenizer_stage, transformer_stage

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Config file.', lock_config=True
)
_STAGE = flags.DEFINE_enum(
  'stage', None, ['tokenizer', 'transformer'], 'Which model to train.'
)
_WORKDIR = flags.DEFINE_string(
  'workdir', 'workdir/pretrain', 'Output folder; each stage writes WORKDIR/<stage>.'
)


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    # Orbax logs every save at INFO; the progress bar and metrics say enough.
    logging.set_verbosity(logging.WARNING)
  config_file = config_flags.get_config_filename(flags.FLAGS['config'])
  # Recorded in every manifest: the exact command that recreates the checkpoint.
  command = shlex.join(['python', '-m', 'varrl_jax.pretrain', *sys.argv[1:]])
  cli.setup_compilation_cache(_CONFIG.value)
  try:
    model = build_model(_CONFIG.value)  # config mistakes fail here, in one line
    if model.family != 'varrl':
      raise ValueError(
        f'config.model.family={model.family!r}: pretraining builds our own '
        "family only ('varrl'); convert a public checkpoint with "
        'python -m varrl_jax.convert instead'
      )
    if _STAGE.value == 'tokenizer':
      tokenizer_stage.check_config(_CONFIG.value)
  except ValueError as e:  # ScheduleError included
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  try:
    if _STAGE.value == 'tokenizer':
      path = tokenizer_stage.train(_CONFIG.value, _WORKDIR.value, command, config_file)
    else:
      path = transformer_stage.train(
        _CONFIG.value, _WORKDIR.value, command, config_file
      )
  except (checkpoint.CheckpointError, PromptError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except loop.Diverged as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(f'{_STAGE.value} checkpoint written to {path}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'stage'])
  app.run(main, flags_parser=cli.parse_flags)
