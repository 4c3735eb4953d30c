"""The from-scratch baseline: the finetune classifier, schedule and augmentation from random weights.

    python -m simclr_jax.main --config=configs/supervised.py --workdir=runs/supervised
"""
from simclr_jax.config_base import classifier_config


def get_config():
  return classifier_config('supervised')
