"""Config fields shared by every stage; configs/*.py start from these.

    from simclr_jax.config_base import base_config
    config = base_config('pretrain')
    apply_overrides(config, {'batch_size': 1024, 'evals.knn.k': 20})
"""
from __future__ import annotations

import ml_collections

from simclr_jax.augment import AugmentSettings

STAGES = ('pretrain', 'finetune', 'linear_eval', 'supervised')

# Fields that fix the model or the data: a workdir refuses to resume with other values.
RUN_DEFINING_FIELDS = ('stage', 'dataset', 'train_limit', 'model', 'width', 'dtype', 'batch_size',
                       'optimizer', 'projection_dims', 'seed', 'label_fraction', 'label_seed',
                       'init_from', 'protocol', 'image_size', 'stem', 'train_split', 'test_fraction')


def augment_config() -> ml_collections.ConfigDict:
  """The SimCLR augmentation of the PyTorch write-up (torchvision defaults): AugmentSettings()."""
  return ml_collections.ConfigDict(AugmentSettings()._asdict())


def evaluator_config(**fields) -> ml_collections.ConfigDict:
  """One evaluator's sub-config. every_epochs: N runs it every N epochs and at the end; 0 only at
  the end; -1 never."""
  return ml_collections.ConfigDict({'every_epochs': 0, **fields})


def base_config(stage: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = stage
  # Data.
  c.dataset = 'cifar10'
  c.data_dir = ''            # '' = the TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
  c.train_limit = 0          # > 0: use only the first N training images
  c.image_size = 0           # > 0: resize on load (shorter side, then centre crop); folders need it
  c.train_split = 'train'    # TFDS split strings: 'train+unlabelled', 'train[:90%]', ...
  c.test_split = 'test'
  c.test_fraction = 0.1      # held out of a labelled folder that has no train/ and test/
  c.eval_dataset = ''        # labelled data for the monitors when the training data has no labels
  c.max_bad_fraction = 0.01  # unreadable images of a folder skipped (with a notice) up to this share
  c.data_placement = 'auto'  # device | stream | auto: device when the uint8 splits fit (input_pipeline)
  c.input_workers = 0        # stream: grain worker processes (0: the CPU cores less one, at most 16)
  # Model.
  c.model = 'resnet18'       # resnet18 | resnet34 | resnet50
  c.width = 1.0              # channel multiplier (tests use narrow networks)
  c.dtype = 'auto'           # compute dtype (auto: bfloat16 on GPU and TPU, float32 on CPU);
  #                            params, BatchNorm statistics and losses stay float32
  c.stem = 'auto'            # cifar (3x3, no max-pool) | imagenet (7x7/2, max-pool) | auto: cifar to 64 px
  c.projection_dims = (2048, 128)
  # Optimisation.
  c.batch_size = 512
  c.epochs = 200
  c.optimizer = 'sgd'        # sgd | lars | adamw
  c.learning_rate = 0.3      # for a batch of 256, scaled by lr_scaling
  c.lr_scaling = 'linear'    # linear | sqrt | none
  c.momentum = 0.9
  c.warmup_epochs = 10.0     # shortened (with a notice) to a quarter of a shorter run
  c.weight_decay = 5e-4
  c.augment = augment_config()
  # SimCLR.
  c.temperature = 0.5
  c.clamp_similarity = False
  c.online_probe_learning_rate = 1e-3  # Adam on the online linear probe (pretraining; 0: no probe)
  # Downstream stages.
  c.init_from = ''           # pretraining workdir or checkpoint directory
  c.label_fraction = 1.0
  c.label_seed = 0
  c.protocol = 'features' if stage == 'linear_eval' else ''  # linear_eval: features | augmented
  # Evaluators, each with its own sub-config (simclr_jax.evaluate.EVALUATORS).
  c.evals = ml_collections.ConfigDict()
  if stage == 'pretrain':
    c.evals.knn = evaluator_config(every_epochs=10, k=200, temperature=0.1)
    c.evals.online_linear = evaluator_config(every_epochs=10)
  else:
    c.evals.classify = evaluator_config(every_epochs=1)
  if stage in ('pretrain', 'linear_eval'):  # the offline probe on frozen features, at the end
    c.evals.linear = evaluator_config(every_epochs=0, weight_decays=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2),
                                      steps=500)
  c.eval_batch_size = 1000   # images per inference chunk
  # Checkpoints, logs, faults.
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


def reference_config(stage: str) -> ml_collections.ConfigDict:
  """The fields (and their types) a config of `stage` must have."""
  return base_config(stage) if stage == 'pretrain' else classifier_config(stage)


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """get_config() of a config file, as --config=PATH would load it (locked: no new fields)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location('simclr_jax_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.lock()
  return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """Sets dotted fields ({'augment.hue': 0.2}) on a locked config; an unknown field raises KeyError."""
  config.update_from_flattened_dict(overrides)
  return config
