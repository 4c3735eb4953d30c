"""Config fields shared by every stage; configs/*.py start from these.

    from simclr_jax.config_base import base_config
    config = base_config('pretrain')
"""
from __future__ import annotations

import ml_collections

STAGES = ('pretrain', 'finetune', 'linear_eval', 'supervised')

# Fields that fix the model or the data: a workdir refuses to resume with other values.
RUN_DEFINING_FIELDS = ('stage', 'dataset', 'train_limit', 'model', 'width', 'dtype', 'batch_size',
                       'optimizer', 'projection_dims', 'seed', 'label_fraction', 'label_seed',
                       'init_from')


def augment_config() -> ml_collections.ConfigDict:
  """The SimCLR augmentation of the PyTorch write-up (torchvision defaults)."""
  return ml_collections.ConfigDict(dict(
      crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_prob=0.5,
      jitter_prob=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
      grayscale_prob=0.2, blur_prob=0.0, blur_sigma=(0.1, 2.0), crop_padding=4,
      mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010)))


def base_config(stage: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = stage
  # Data.
  c.dataset = 'cifar10'
  c.data_dir = ''            # '' = the TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
  c.train_limit = 0          # > 0: use only the first N training images
  # Model.
  c.model = 'resnet18'       # resnet18 | resnet34 | resnet50
  c.width = 1.0              # channel multiplier (tests use narrow networks)
  c.dtype = 'bfloat16'       # compute dtype; params, BatchNorm statistics and losses stay float32
  c.projection_dims = (2048, 128)
  # Optimisation.
  c.batch_size = 512
  c.epochs = 200
  c.optimizer = 'sgd'        # sgd | lars | adamw
  c.learning_rate = 0.3      # for a batch of 256, scaled by lr_scaling
  c.lr_scaling = 'linear'    # linear | sqrt | none
  c.momentum = 0.9
  c.warmup_epochs = 10.0
  c.weight_decay = 5e-4
  c.augment = augment_config()
  # SimCLR.
  c.temperature = 0.5
  c.clamp_similarity = False
  # Downstream stages.
  c.init_from = ''           # pretraining workdir or checkpoint directory
  c.label_fraction = 1.0
  c.label_seed = 0
  # Monitoring, checkpoints, faults.
  c.knn_every_epochs = 10    # 0 = only at the end
  c.knn_k = 200
  c.knn_temperature = 0.1
  c.eval_every_epochs = 1
  c.eval_batch_size = 1000
  c.checkpoint_every_epochs = 10
  c.keep_checkpoints = 3
  c.log_every_steps = 50
  c.skip_nonfinite = False   # True: skip updates whose loss or gradients are not finite, and count them
  c.inject_nan_at_step = -1  # fault injection for tests: make the loss NaN at this step
  c.seed = 0
  return c


def classifier_config(stage: str) -> ml_collections.ConfigDict:
  """finetune and supervised share everything but the starting weights."""
  c = base_config(stage)
  c.epochs = 100
  c.batch_size = 256
  c.learning_rate = 0.1
  c.warmup_epochs = 2.0
  c.weight_decay = 5e-4
  return c


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """get_config() of a config file, as --config=PATH would load it (locked: no new fields)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location('simclr_jax_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.lock()
  return config
