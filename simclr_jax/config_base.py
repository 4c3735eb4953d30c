"""Config fields shared by every stage; configs/*.py start from these.

    from simclr_jax.config_base import base_config
    config = base_config('pretrain', method='byol')   # the method's own fields included
    apply_overrides(config, {'batch_size': 1024, 'evals.knn.k': 20})

Defaults are written once, here (augmentation: augment.AugmentSettings; a method's fields: its
module's FIELDS); configs/<name>.py changes only what its recipe changes.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from simclr_jax.data import views
from simclr_jax.data.augment import AugmentSettings

STAGES = ('pretrain', 'finetune', 'linear_eval', 'supervised', 'distill')
DOWNSTREAM = ('finetune', 'linear_eval')   # stages that start from a pretraining run (init_from)

# Fields that fix the model or the data: a workdir refuses to resume with other values (with the
# method's own, which its module declares: run_defining_fields).
RUN_DEFINING_FIELDS = ('stage', 'method', 'dataset', 'train_limit', 'model', 'width', 'dtype', 'batch_size',
                       'optimizer', 'lars_trust_ratio', 'lars_clip', 'lars_lr_in_momentum', 'seed',
                       'label_fraction', 'label_seed', 'init_from', 'protocol', 'image_size', 'stem', 'patch_size',
                       'train_split', 'test_fraction', 'finetune_from_head_layer', 'teacher_from',
                       'distill_temperature', 'distill_label_weight')


def augment_config() -> ml_collections.ConfigDict:
  """The SimCLR augmentation of the PyTorch write-up (torchvision defaults): AugmentSettings()."""
  return ml_collections.ConfigDict(AugmentSettings()._asdict())


def view2_config() -> ml_collections.ConfigDict:
  """The second view's differences from `augment` (None: the same), for asymmetric views."""
  return views.overrides_config()


def evaluator_config(type: str, every_epochs: int = 0, **fields) -> ml_collections.ConfigDict:
  """One evaluator instance's sub-config (evals.TYPES[type]): its type's FIELDS at their defaults
  but `fields`. every_epochs: N runs it every N epochs and at the end; 0 only at the end; -1 never."""
  from simclr_jax.evals import TYPES
  defaults = {k: default for k, (default, _) in TYPES[type].FIELDS.items()}
  return ml_collections.ConfigDict({'type': type, 'every_epochs': every_epochs, **defaults, **fields})


def method_fields(method: str) -> dict:
  """The fields a method adds to a pretraining config, with their defaults (its module's FIELDS)."""
  from simclr_jax import methods
  return methods.get(method).defaults()


def run_defining_fields(config: dict) -> tuple:
  """The fields that define the run of a config (as a dict: a checkpoint's record of it), the
  method's own included."""
  from simclr_jax import methods
  own = methods.get(config['method']).run_defining() if config.get('method') in methods.NAMES else ()
  return RUN_DEFINING_FIELDS + own


def base_config(stage: str, method: str = 'simclr') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = stage            # pretrain | finetune | linear_eval | supervised | distill
  # Data.
  c.dataset = 'cifar10'      # a TFDS name (cifar10, cifar10_jpeg, stl10, ...) or folder:PATH
  c.data_dir = ''            # '' = the TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
  c.train_limit = 0          # > 0: use only the first N training images
  c.image_size = 0           # > 0: resize on load (shorter side, then centre crop); folders need it
  c.train_split = 'train'    # TFDS split strings: 'train+unlabelled', 'train[:90%]', ...
  c.test_split = 'test'      # the split the monitors and classifiers are tested on ('' for none)
  c.test_fraction = 0.1      # held out of a labelled folder that has no train/ and test/
  c.eval_dataset = ''        # labelled data for the monitors when the training data has no labels
  c.max_bad_fraction = 0.01  # unreadable images of a folder tolerated (black, unlabelled) up to this share
  c.allow_data_change = False  # resume on data that changed since the checkpoint (with a notice)
  c.data_placement = 'auto'  # device | stream | auto: device when the uint8 splits fit (input_pipeline)
  c.input_workers = 0        # stream: grain worker processes (0: the CPU cores less one, at most 16)
  # Model.
  c.model = 'resnet18'       # resnet10 | resnet18 | resnet34 | resnet50 | vit_nano | vit_tiny | vit_small | vit_base
  c.width = 1.0              # channel (a ViT: embedding) multiplier; tests use narrow networks
  c.dtype = 'auto'           # compute dtype (auto: bfloat16 on GPU and TPU, float32 on CPU);
  #                            params, BatchNorm statistics and losses stay float32
  c.stem = 'auto'            # cifar (3x3, no max-pool) | imagenet (7x7/2, max-pool) | auto: cifar to 64 px
  c.patch_size = 4           # a ViT's patches (4 for 32 px images, 16 at 224 px); ResNets ignore it
  c.remat = False            # True: the encoder's blocks recomputed in the backward pass (less memory, ~1/3 more compute)
  # Optimisation.
  c.batch_size = 512         # the global batch, over every device and host
  c.epochs = 200             # the run's length; a rerun with more epochs trains on from its checkpoint
  c.optimizer = 'sgd'        # sgd | lars | adamw
  c.learning_rate = 0.3      # for a batch of 256, scaled by lr_scaling
  c.lr_scaling = 'linear'    # linear | sqrt | none
  c.momentum = 0.9           # SGD's and LARS's momentum, AdamW's beta1
  c.warmup_epochs = 10.0     # shortened (with a notice) to a quarter of a shorter run
  c.weight_decay = 5e-4      # on kernels only (biases, norms, position embeddings and tokens take none)
  c.weight_decay_end = config_dict.placeholder(float)  # unset: constant; a value: a half cosine to it over the run
  c.adam_beta2 = 0.999       # AdamW's second-moment decay (MAE's recipe: 0.95)
  c.gradient_clip_norm = 0.0  # > 0: gradients clipped to this global norm before the optimiser
  c.layer_decay = 1.0        # < 1: a ViT's layer-wise learning-rate decay (block i of L: decay ** (L - i))
  c.lars_eta = 0.001         # LARS's trust coefficient (its form: the next three fields, optim.Lars)
  c.lars_trust_ratio = 'update_norm'  # update_norm (google-research/simclr) | sum_of_norms (solo-learn)
  c.lars_clip = False        # LARC: the trust ratio over the learning rate, capped at 1 (solo-learn's clip_lr)
  c.lars_lr_in_momentum = True  # the learning rate inside the momentum buffer (google-research/simclr) or outside (PyTorch)
  c.augment = augment_config()
  if stage == 'pretrain':
    c.method = method        # the self-supervised method (simclr_jax.methods); its own fields come with it
    c.view2 = view2_config()  # the second view's differences from augment (asymmetric views)
    c.batch_chunks = 1       # K > 1: the step's batch through the network in K chunks (gradient caching: less
    #                          memory, the same loss over the whole batch; BatchNorm's statistics per chunk)
    c.update(method_fields(method))
    c.online_probe_learning_rate = 1e-3  # Adam on the online linear probe (0: no probe)
  if stage != 'supervised':
    c.finetune_from_head_layer = 0  # 0: the encoder's features; K: after the projector's layer K (SimCLR v2)
  # Downstream stages.
  if stage in DOWNSTREAM + ('distill',):
    c.init_from = ''         # pretraining workdir or checkpoint directory (distill: optional)
    # Unset (None): the encoder's architecture and the data of the run it starts from (distill: init_from,
    # else the teacher's), read from its checkpoint when the run starts (stages.starts).
    for key, kind in (('model', str), ('width', float), ('stem', str), ('patch_size', int), ('dataset', str),
                      ('data_dir', str), ('image_size', int)):
      c[key] = config_dict.placeholder(kind)
  if stage == 'distill':     # SimCLR v2's distillation (simclr_jax.stages.distill)
    c.teacher_from = ''      # finetune (or supervised, distill) workdir whose classifier teaches
    c.distill_temperature = 1.0  # softmax temperature of teacher and student
    c.distill_label_weight = 0.0  # weight of the true labels' cross-entropy (labelled images only)
  c.label_fraction = 1.0     # a class-balanced share of the training labels (the rest count as unlabelled)
  c.label_seed = 0           # which images that share is
  if stage == 'linear_eval':
    c.protocol = 'features'  # features (fit on frozen, unaugmented features) | augmented (train a linear head)
  # Evaluators: config.evals.<name> = evaluator_config(type, ...) (simclr_jax.evals.TYPES).
  c.evals = ml_collections.ConfigDict()
  if stage == 'pretrain':
    c.evals.knn = evaluator_config('knn', every_epochs=10)
    c.evals.online_linear = evaluator_config('online_linear', every_epochs=10)
  else:
    c.evals.test = evaluator_config('classify', every_epochs=1)
  if stage in ('pretrain', 'linear_eval'):  # the offline probe on frozen features, at the end
    c.evals.linear = evaluator_config('linear', every_epochs=0)
  c.eval_batch_size = 1000   # images per inference chunk
  # Checkpoints, logs, faults.
  c.checkpoint_every_epochs = 10  # and at the end and on SIGTERM; 0: only then
  c.keep_checkpoints = 3     # the newest checkpoints kept
  c.log_every_steps = 50     # a progress line and a metrics row every N steps (or log_every_seconds)
  c.log_every_seconds = 30.0  # ... or after this many seconds, whichever comes first
  c.skip_nonfinite = False   # True: skip updates whose loss or gradients are not finite, and count them
  c.inject_nan_at_step = -1  # fault injection for tests: make the loss NaN at this step
  c.seed = 0                 # initialisation, augmentation and shuffling
  return c


def classifier_config(stage: str) -> ml_collections.ConfigDict:
  """finetune and supervised share everything but the starting weights."""
  c = base_config(stage)
  c.epochs = 100
  c.batch_size = 256
  c.learning_rate = 0.1
  c.warmup_epochs = 2.0
  c.weight_decay = 5e-4      # on kernels only (biases, norms, position embeddings and tokens take none)
  return c


def reference_config(config) -> ml_collections.ConfigDict:
  """The fields (and their types) a config of its stage and method must have."""
  stage = config.get('stage')
  stage = stage if stage in STAGES else 'pretrain'
  if stage == 'pretrain':
    return base_config(stage, config.get('method') or 'simclr')
  return base_config(stage) if stage == 'linear_eval' else classifier_config(stage)


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
