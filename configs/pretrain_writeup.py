"""The PyTorch write-up's own pretraining settings (batch 256, no warmup, weight decay 1e-6,
similarities clamped at 1e-7), for side-by-side comparisons.

    python -m simclr_jax.main --config=configs/pretrain_writeup.py --workdir=runs/writeup
"""
from simclr_jax.config_base import base_config


def get_config():
  c = base_config('pretrain')
  c.batch_size = 256
  c.learning_rate = 0.3
  c.warmup_epochs = 0.0
  c.weight_decay = 1e-6
  c.clamp_similarity = True
  return c
