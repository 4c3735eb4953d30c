"""SimCLR pretraining: the default recipe, the same as configs/pretrain.py (a config per method).

    python -m simclr_jax.main --config=configs/simclr.py --workdir=runs/simclr
"""
from simclr_jax.config_base import base_config


def get_config():
  return base_config('pretrain', 'simclr')
