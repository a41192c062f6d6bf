r"""The embedded default: a few-million-parameter model that runs on one CPU.

32x128 sign-like images, a 4x-downsampling tokenizer (8x32 latent grid), five
scales, a 4-layer d=256 transformer.

  python -m varrl_jax.sample --config=configs/tiny.py

Its weights come from supervised pretraining on synthetic renders, sized so
that both stages together take about an hour on 2 CPU cores:

  python -m varrl_jax.pretrain --config=configs/tiny.py --stage=tokenizer \
      --workdir=workdir/pretrain     # ~18 min: 450 steps x 16 images, ~2.2 s/step
  python -m varrl_jax.pretrain --config=configs/tiny.py --stage=transformer \
      --workdir=workdir/pretrain     # ~34 min: 650 steps x 8 examples, ~2.9 s/step

Then ``--config.init_checkpoint=workdir/pretrain/transformer/checkpoints/final``
loads the result (tokenizer and transformer) anywhere a config is taken.
"""

from varrl_jax.config import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  # Half the base width: on XLA-CPU the conv weight gradients dominate a step,
  # and (64, 128, 128) trains ~4x slower (12 s vs 2.3 s per 16 images).
  config.tokenizer.channels = (32, 64, 64)
  config.sampling.batch_size = 8
  # Unrolled layers: ~10% faster sampling on CPU, and XLA's cost analysis
  # then counts every layer (it counts a scanned loop body once).
  config.model.scan_unroll = 4

  pt = config.pretrain
  pt.tokenizer.steps = 450
  pt.tokenizer.batch_size = 16
  pt.tokenizer.lr = 1e-3
  pt.tokenizer.warmup_steps = 25
  # Short run, fast lr: codes die within ~20 steps and must come back soon.
  pt.tokenizer.dead_code_steps = 20
  pt.tokenizer.log_every = 10
  pt.tokenizer.sample_every = 100
  pt.tokenizer.ckpt_every = 100

  pt.transformer.steps = 650
  pt.transformer.batch_size = 8
  pt.transformer.lr = 1e-3
  pt.transformer.warmup_steps = 30
  pt.transformer.log_every = 10
  pt.transformer.sample_every = 130
  pt.transformer.ckpt_every = 130
  return config
