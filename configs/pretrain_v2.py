"""SimCLR v2's pretraining recipe on CIFAR: a three-layer projection head with BatchNorm, and the
monitors and fine-tuning reading the head's first layer.

    python -m simclr_jax.main --config=configs/pretrain_v2.py --workdir=runs/v2
    python -m simclr_jax.main --config=configs/finetune.py --workdir=runs/v2_ft1 \\
        --config.init_from=runs/v2 --config.finetune_from_head_layer=1 --config.label_fraction=0.01

Sources (google-research/simclr, tf2/): projection_dims (512, 512, 128) and projector_norm: the
head of tf2/model.py with num_proj_layers=3 (hidden layers as wide as the encoder's 512 features,
proj_out_dim 128; each Dense without bias, then BatchNorm, the last without centring, ReLU
between); finetune_from_head_layer=1: ft_proj_selector=1 of the README's semi-supervised
fine-tuning; LARS, weight decay 1e-4, learning rate 1.0 x batch/256, temperature 0.5, batch 512:
the CIFAR-10 command of tf2/README.md (its 1,000 epochs shortened to this project's 200). The
augmentation stays the write-up's (the CIFAR command's colour strength 0.5 without blur is close).
"""
from simclr_jax.config_base import base_config


def get_config():
  c = base_config('pretrain', 'simclr')
  c.projection_dims = (512, 512, 128)
  c.projector_norm = True
  c.finetune_from_head_layer = 1
  c.optimizer = 'lars'
  c.learning_rate = 1.0
  c.weight_decay = 1e-4
  c.temperature = 0.5
  c.batch_size = 512
  return c
