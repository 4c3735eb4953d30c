"""Frozen-encoder linear probe: encoder weights and BatchNorm statistics never change.

    python -m simclr_jax.main --config=configs/linear_eval.py --workdir=runs/linear \
        --config.init_from=runs/pretrain
"""
from simclr_jax.config_base import base_config


def get_config():
  c = base_config('linear_eval')
  c.epochs = 100
  c.batch_size = 512
  c.optimizer = 'sgd'
  c.learning_rate = 0.1
  c.lr_scaling = 'linear'
  c.warmup_epochs = 0.0
  c.weight_decay = 0.0
  return c
