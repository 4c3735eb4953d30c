"""Fine-tune the whole network from a SimCLR encoder, with a fresh linear head.

    python -m simclr_jax.main --config=configs/finetune.py --workdir=runs/finetune \\
        --config.init_from=runs/pretrain
"""
from simclr_jax.config_base import classifier_config


def get_config():
  return classifier_config('finetune')
