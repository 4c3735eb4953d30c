"""A method's whole training step against a PyTorch peer built from lightly's pieces, step by step.

    config = peer_config('byol', {'dataset': 'cifar10_jpeg', 'data_dir': '../shared/data/tfds'})
    ours = run_ours(config, images, labels, steps=4)     # the project's compiled step, its views and states
    peer = PEERS['byol'](ours, dtype='float64')          # the same initial weights, as a PyTorch model
    theirs = peer.run(ours['views'])                     # the same views, optimiser and schedule
    loss_differences(ours['losses'], theirs['losses'])  # per step
    differences(named_states(ours), theirs['states'], ours)   # per part, relative to how far ours moved
    failures(ours, peer32, exact, peer32)                # what breaks the bounds below ([] when none)

tests/peers/test_lightly_steps.py runs it in the suite; scripts/peer_check.py prints its table.

Both sides start from the same weights: the project's initial encoder goes into torchvision's
ResNet through the torchvision export (trained_encoder.torchvision_state_dict), the heads into
lightly's heads (SimCLRProjectionHead, BYOLProjectionHead, BYOLPredictionHead) by layer. Both
train on the same augmented views: the project's views of the batch at each step, handed to the
peer as tensors (the augmentation is checked on its own in tests/data). The peer's optimiser is
torch.optim.SGD with the project's parameter groups written here from the recipe (weight decay on
kernels only), its learning rate the warmup-cosine of the config's docstring written here too;
the loss is lightly's (NTXentLoss, NegativeCosineSimilarity), the EMA lightly's update_momentum
with its cosine_schedule, and BatchNorm torch's.

Differences by design, stated where the peer bridges them:
- BYOL's loss: the project sums 2 - 2 cos over the two directions (as solo-learn and the paper);
  lightly's example averages -cos. The peer takes lightly's NegativeCosineSimilarity c and writes
  the paper's sum, (2 + 2 c(p1, t2)) + (2 + 2 c(p2, t1)).
- The EMA's schedule: the project's tau at step k of K is the paper's
  1 - (1 - base) (cos(pi k / K) + 1) / 2; lightly's cosine_schedule divides by max_steps - 1, so
  the peer calls it with max_steps = K + 1. The project updates the target after the optimiser
  step with tau(k); lightly's examples before the forward of step k + 1 with the same online
  weights: the same target at every forward.
- BatchNorm's batch variance: Flax's BatchNorm (the project keeps its default) computes it in one
  pass, E[x^2] - E[x]^2, clipped at 0; torch in two, E[(x - E[x])^2]. In float32 the one pass loses
  digits to cancellation: with torch's own BatchNorm, one SimCLR step at width 1 put the project's encoder 7%
  of its change away from the float64 peer's, where the float32 peer's was 0.8% away (and the
  project's too, with Flax's two-pass form). So the peer's BatchNorm layers compute their batch
  statistics as Flax does (one_pass_batchnorm), and the float32 peer rounds as the project does.
  Its running variance is then the biased one, as Flax keeps it. With variance='torch' the peer
  keeps torch's BatchNorm, whose running variance takes the unbiased batch variance (n / (n - 1)
  times the biased one); the peer subtracts what that adds (Peer.var_excess) before the comparison.
"""
from __future__ import annotations

import copy
import math

import jax
import numpy as np

from simclr_jax import methods, models
from simclr_jax.core import parallel
from simclr_jax.data import augment, pipeline, sources
from simclr_jax.stages import pretrain, runner
from simclr_jax.trained_encoder import torchvision_state_dict

# A ResNet of one BasicBlock per stage (resnet10) at width 0.125, with the CIFAR stem: torchvision's
# blocks at the tests' width (torch_resnet); narrow heads.
PEER_FIELDS = {'model': 'resnet10', 'width': 0.125, 'dtype': 'float32', 'batch_size': 16, 'epochs': 4,
               'warmup_epochs': 1.0, 'optimizer': 'sgd', 'momentum': 0.9, 'weight_decay': 5e-4, 'learning_rate': 0.3,
               'online_probe_learning_rate': 0.0, 'augment.jitter_prob': 0.8, 'projection_dims': (64, 32)}
# Learning rates (x batch/256) at which these tiny networks are stable enough in float32 to compare
# 3 moving steps. BYOL's steps are the more sensitive to rounding (BatchNorm over 16 images per
# view, through two networks): at 0.03 and width 1 its own float32 and float64 peers parted by
# 1e-4 in the loss at the fourth step; at 0.01 they stay below 2e-5. SimSiam's predictor moves at
# the peak rate from the first step: at 0.03 the float32 peer's encoder ends 17% of its change from
# the float64 peer's, at 0.01 3.9%.
METHOD_FIELDS = {'simclr': {'learning_rate': 0.03},
                 'byol': {'learning_rate': 0.01, 'predictor_dims': (64, 32), 'base_tau': 0.9},
                 'simsiam': {'learning_rate': 0.01, 'projection_dims': (64, 64, 32), 'predictor_dims': (16, 32)},
                 'barlow_twins': {'learning_rate': 0.03, 'projection_dims': (64, 64, 64)},
                 'dcl': {'learning_rate': 0.03, 'dcl_sigma': 0.5}}  # DCLW; DCL is its sigma = 0
LOSS_BOUND = 1e-4  # relative, every step, against the float32 peer
# The arrays: float32 rounding alone moves them by a share of their change that can be large
# (BatchNorm biases sum gradients that cancel: after 3 steps the peer's float32 target is 3% of
# the change from its float64 one). The peer's BatchNorm computes its variance in one pass as
# Flax's does (one_pass_batchnorm), so that the float32 peer rounds as ours does. Ours is held to
# the float64 peer within RATIO_BOUND times the float32 peer's own distance from it, or FLOOR of
# the change where that is larger: another valid float32 order is that far off too (our step
# compiled without LLVM's optimisations puts BYOL's encoder 1.8% of its change from the float64
# peer, where the float32 peer is 0.18% away), and a broken variant is off by its whole change.
RATIO_BOUND, FLOOR = 10.0, 5e-2


def peer_config(method: str, fields: dict):
  """configs/<method>.py with PEER_FIELDS, the method's METHOD_FIELDS and then `fields` (the data's
  dataset and data_dir at least) applied."""
  import os
  from simclr_jax.config_base import apply_overrides, load_config_file
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  config = load_config_file(os.path.join(root, 'configs', f'{method}.py'))
  return apply_overrides(config, {**PEER_FIELDS, **METHOD_FIELDS.get(method, {}), **fields})


def run_ours(config, images: np.ndarray, labels: np.ndarray, steps: int) -> dict:
  """The project's compiled step (stages.pretrain.build_task's) for `steps` steps on the same
  batch (uint8 [B, H, W, 3], B = config.batch_size): {'losses', 'views' (each step's, numpy
  [n, B, H, W, 3] per group), 'states' (numpy variables and method state after each step),
  'initial', 'spec', 'config', 'total_steps'}."""
  mesh = parallel.make_mesh()
  source = sources.in_memory('peer', sources.Split(images, labels), num_classes=10)
  inputs = pipeline.DeviceInputs(source, None, mesh, config.batch_size, 0)
  settings = runner.loop_settings(config, inputs.steps_per_epoch, {})  # as runner.train_and_evaluate
  # The step takes as its input the views the method makes from each step's key (as its own step
  # makes them inside), so that the same arrays go to the peer and augmentation compiles once.
  task = pretrain.build_task(config, mesh, inputs, None, settings.total_steps, make_views=lambda key, views: views)
  method = methods.get(config.method)(config, settings.total_steps)
  make_views = jax.jit(method.inputs(augment.settings_from_config(config.augment),
                                     augment.settings_from_config(config.augment, config.view2)))
  state = task.state
  images, labels = jax.numpy.asarray(images), jax.numpy.asarray(labels)
  step = jax.jit(task.step_fn)
  snapshot = lambda s: jax.device_get({'params': s.params, 'batch_stats': s.batch_stats,
                                       'method_state': s.method_state})
  out = {'losses': [], 'views': [], 'states': [], 'initial': snapshot(state), 'spec': task.meta['model'],
         'config': config, 'total_steps': settings.total_steps, 'steps_per_epoch': inputs.steps_per_epoch}
  for _ in range(steps):
    views = make_views(jax.random.fold_in(state.key, state.step), images)
    out['views'].append(jax.device_get(views))
    state, metrics = step(state, views, labels)
    out['losses'].append(float(metrics['loss']))
    out['states'].append(snapshot(state))
  return out


def learning_rate(k: int, config, steps_per_epoch: int, total_steps: int) -> float:
  """The recipe's schedule, from configs/pretrain.py's docstring: base_lr x batch/256, a linear
  warmup from 0 over warmup_epochs, then a cosine to 0 at the run's last step."""
  peak = peak_learning_rate(config)
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  if k < warmup:
    return peak * k / warmup
  return 0.5 * peak * (1 + math.cos(math.pi * min(1.0, (k - warmup) / max(1, total_steps - warmup))))


def peak_learning_rate(config) -> float:
  return config.learning_rate * config.batch_size / 256


# Weights across: Flax variables to torch modules.
def torch_resnet(spec: dict, variables: dict):
  """torchvision's ResNet, its stages built by torchvision's own ResNet._make_layer from its
  BasicBlock or Bottleneck at the spec's width (64 x width channels at the stem: torchvision's
  constructor fixes 64, so the stem and the stages are rebuilt narrower, as torchvision builds
  them), holding the encoder of variables through the torchvision export's names."""
  import torch
  import torchvision
  block, layers = models.ARCHITECTURES[spec['model']]
  block = torchvision.models.resnet.BasicBlock if block == 'basic' else torchvision.models.resnet.Bottleneck
  model = torchvision.models.ResNet(block, list(layers))
  base = max(1, int(round(64 * spec['width'])))  # as models.resnet.ResNet
  if spec['stem'] == 'cifar':
    model.conv1 = torch.nn.Conv2d(3, base, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
  else:
    model.conv1 = torch.nn.Conv2d(3, base, 7, 2, 3, bias=False)
  model.bn1, model.inplanes = torch.nn.BatchNorm2d(base), base
  for i, blocks in enumerate(layers):
    setattr(model, f'layer{i + 1}', model._make_layer(block, base * 2 ** i, blocks, stride=1 if i == 0 else 2))
  model.fc = torch.nn.Identity()
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in torchvision_state_dict(variables, spec).items()})
  return model


def _head_layers(head):
  """(index, Linear, BatchNorm1d or None) of a lightly ProjectionHead, in order."""
  import torch
  mods = list(head.layers)
  out = []
  for i, m in enumerate(mods):
    if isinstance(m, torch.nn.Linear):
      norm = mods[i + 1] if i + 1 < len(mods) and isinstance(mods[i + 1], torch.nn.BatchNorm1d) else None
      out.append((len(out), m, norm))
  return out


def load_head(head, params: dict, stats: dict) -> None:
  """A lightly head's layers from an MLPHead's variables (dense_i -> the i-th Linear, norm_i -> its
  BatchNorm), strictly: every layer and shape."""
  import torch
  layers = _head_layers(head)
  assert len(layers) == len([k for k in params if k.startswith('dense_')]), (len(layers), list(params))
  with torch.no_grad():
    for i, linear, norm in layers:
      dense = params[f'dense_{i}']
      linear.weight.copy_(torch.from_numpy(np.array(dense['kernel']).T))
      assert (linear.bias is None) == ('bias' not in dense), i
      if linear.bias is not None:
        linear.bias.copy_(torch.from_numpy(np.array(dense['bias'])))
      assert (norm is None) == (f'norm_{i}' not in stats), i
      if norm is not None:  # a BatchNorm without affine (SimSiam's last) has statistics and no parameters
        assert norm.affine == (f'norm_{i}' in params), i
        if norm.affine:
          norm.weight.copy_(torch.from_numpy(np.array(params[f'norm_{i}']['scale'])))
          norm.bias.copy_(torch.from_numpy(np.array(params[f'norm_{i}']['bias'])))
        norm.running_mean.copy_(torch.from_numpy(np.array(stats[f'norm_{i}']['mean'])))
        norm.running_var.copy_(torch.from_numpy(np.array(stats[f'norm_{i}']['var'])))


def head_names(params: dict, stats: dict, prefix: str) -> dict:
  """An MLPHead's variables under the torch names of the lightly head load_head fills."""
  out = {}
  layer = 0
  for i in range(len([k for k in params if k.startswith('dense_')])):
    out[f'{prefix}.layers.{layer}.weight'] = np.array(params[f'dense_{i}']['kernel']).T
    if 'bias' in params[f'dense_{i}']:
      out[f'{prefix}.layers.{layer}.bias'] = np.array(params[f'dense_{i}']['bias'])
    layer += 1
    if f'norm_{i}' in stats:
      for ours, theirs in (('scale', 'weight'), ('bias', 'bias')):
        if ours in params.get(f'norm_{i}', {}):
          out[f'{prefix}.layers.{layer}.{theirs}'] = np.array(params[f'norm_{i}'][ours])
      for ours, theirs in (('mean', 'running_mean'), ('var', 'running_var')):
        out[f'{prefix}.layers.{layer}.{theirs}'] = np.array(stats[f'norm_{i}'][ours])
      layer += 1
    layer += 1  # the ReLU (the last layer has none, and nothing follows it)
  return out


def torch_names(variables: dict, spec: dict, parts=('encoder', 'projector', 'predictor'), prefix: str = '') -> dict:
  """The project's variables ({'params', 'batch_stats'}) under the peer's state-dict names:
  backbone.* (torchvision's), projector.* and predictor.* (lightly's heads)."""
  out = {}
  if 'encoder' in parts:
    out.update({f'{prefix}backbone.{k}': v for k, v in torchvision_state_dict(variables, spec).items()
                if not k.endswith('num_batches_tracked')})
  for part in parts[1:]:
    if part in variables['params']:
      out.update(head_names(variables['params'][part], variables['batch_stats'].get(part, {}), f'{prefix}{part}'))
  return out


def _sgd(modules, config, constant=()):
  """torch.optim.SGD over modules with the recipe's groups: weight decay on kernels (ndim > 1),
  none on biases and BatchNorm; the modules of `constant` in groups of their own marked
  'constant_lr' (Peer.run keeps them at the peak learning rate)."""
  import torch
  groups = []
  for ms, fixed in ((modules, False), (constant, True)):
    params = [p for m in ms for p in m.parameters() if p.requires_grad]
    groups += [{'params': [p for p in params if p.ndim > 1], 'weight_decay': config.weight_decay, 'constant_lr': fixed},
               {'params': [p for p in params if p.ndim <= 1], 'weight_decay': 0.0, 'constant_lr': fixed}]
  return torch.optim.SGD([g for g in groups if g['params']], lr=0.0, momentum=config.momentum, nesterov=False)


def _nchw(views: np.ndarray):
  import torch
  return torch.from_numpy(np.ascontiguousarray(np.asarray(views, np.float32).transpose(0, 3, 1, 2)))


def _feature_dim(initial) -> int:
  """The encoder's feature size: the projector's input."""
  return int(np.shape(initial['params']['projector']['dense_0']['kernel'])[0])


def one_pass_batchnorm(module) -> None:
  """Makes a torch BatchNorm layer compute its training-mode statistics as Flax's nn.BatchNorm does
  by default: the mean and the mean of squares in one pass, the variance their difference clipped
  at 0, the running averages updated with that (biased) variance; inference mode is torch's."""
  import torch
  plain = module.forward

  def forward(x):
    if not module.training:
      return plain(x)
    dims = [d for d in range(x.ndim) if d != 1]
    shape = [1, -1] + [1] * (x.ndim - 2)
    mean, mean_sq = x.mean(dim=dims), (x * x).mean(dim=dims)
    var = torch.clamp(mean_sq - mean * mean, min=0)
    with torch.no_grad():
      m = module.momentum
      module.running_mean.mul_(1 - m).add_(m * mean.detach())
      module.running_var.mul_(1 - m).add_(m * var.detach())
    y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + module.eps)
    return y * module.weight.view(shape) + module.bias.view(shape) if module.affine else y
  module.forward = forward


class Peer:
  """A method's PyTorch step from the project's initial variables (ours: run_ours' output).
  Subclasses set the modules and the loss; run(views) returns {'losses', 'states'} with states
  under torch_names' names."""
  BROKEN = ()  # the deliberately broken variants a subclass has (the harness must catch each)

  def __init__(self, ours: dict, broken: str = '', dtype: str = 'float32', variance: str = 'one_pass'):
    import torch
    if broken and broken not in self.BROKEN:
      raise ValueError(f'{type(self).__name__} has no broken variant {broken!r}: choose from {", ".join(self.BROKEN)}')
    torch.manual_seed(0)
    self.broken, self.dtype = broken, getattr(torch, dtype)
    self.config, self.spec = ours['config'], ours['spec']
    self.total_steps, self.steps_per_epoch = ours['total_steps'], ours['steps_per_epoch']
    self.build(ours['initial'])
    for module in self.named().values():
      module.to(self.dtype)
    constant = self.constant_lr()
    self.optimizer = _sgd([m for m in self.trained() if all(m is not c for c in constant)], self.config, constant)
    # BatchNorm module name -> what torch's unbiased running variance has gained over the biased
    # one Flax keeps (variance='torch' only; one_pass_batchnorm keeps the biased one): each
    # training-mode call adds momentum x var / (n - 1) (n: the elements per channel), decayed as
    # the running average; subtracted before the comparison.
    self.var_excess = {}
    for prefix, module in self.named().items():
      for sub, m in module.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
          if variance == 'one_pass':
            one_pass_batchnorm(m)
          else:
            m.register_forward_pre_hook(self._excess_recorder(f'{prefix}.{sub}'))

  def _excess_recorder(self, name: str):
    """A forward pre-hook adding a torch BatchNorm call's unbiased-variance excess to var_excess[name]."""
    import torch

    def record(module, args):
      if not module.training:
        return
      x = args[0].detach()
      dims = [d for d in range(x.ndim) if d != 1]
      n = x.numel() // x.shape[1]
      excess = x.var(dim=dims, unbiased=False) / (n - 1)
      prev = self.var_excess.get(name, torch.zeros_like(excess))
      self.var_excess[name] = (1 - module.momentum) * prev + module.momentum * excess
    return record

  def state(self) -> dict:
    """The peer's arrays under torch_names' names, its running variances less var_excess."""
    out = {}
    for prefix, module in self.named().items():
      for n, t in module.state_dict().items():
        name = f'{prefix}.{n}'
        if name.endswith('num_batches_tracked'):
          continue
        if name.endswith('running_var'):
          t = t - self.var_excess.get(name.rsplit('.', 1)[0], 0)
        out[name] = t.detach().double().numpy().copy()
    return out

  def run(self, views_per_step: list) -> dict:
    out = {'losses': [], 'states': []}
    for k, views in enumerate(views_per_step):
      lr = learning_rate(k, self.config, self.steps_per_epoch, self.total_steps)
      for group in self.optimizer.param_groups:
        group['lr'] = peak_learning_rate(self.config) if group['constant_lr'] else lr
      self.optimizer.zero_grad()
      loss = self.loss(k, [_nchw(v).to(self.dtype) for v in views['global']])
      loss.backward()
      self.before_step(k)
      self.optimizer.step()
      self.after_step(k)
      out['losses'].append(float(loss.detach()))
      out['states'].append(self.state())
    return out

  def constant_lr(self):
    """Those of the trained modules at the peak learning rate throughout (a method's parameter group)."""
    return []

  def before_step(self, k):
    pass

  def after_step(self, k):
    pass


class SimCLRPeer(Peer):
  """torchvision's ResNet, lightly's SimCLRProjectionHead without BatchNorm (the write-up's
  512-2048-128 MLP) and lightly's NTXentLoss; both views through the network as one batch, as
  google-research/simclr and the write-up do. broken='per_view': each view on its own."""
  BROKEN = ('per_view',)

  def build(self, initial):
    from lightly.loss import NTXentLoss
    from lightly.models.modules.heads import SimCLRProjectionHead
    dims = tuple(self.config.projection_dims)
    self.backbone = torch_resnet(self.spec, initial)
    self.projector = SimCLRProjectionHead(_feature_dim(initial), dims[0], dims[-1], num_layers=len(dims),
                                          batch_norm=False)
    load_head(self.projector, initial['params']['projector'], initial['batch_stats'].get('projector', {}))
    self.criterion = NTXentLoss(temperature=self.config.temperature)

  def trained(self):
    return [self.backbone, self.projector]

  def named(self):
    return {'backbone': self.backbone, 'projector': self.projector}

  def loss(self, k, views):
    import torch
    x1, x2 = views
    if self.broken == 'per_view':
      z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
    else:
      z1, z2 = self.projector(self.backbone(torch.cat([x1, x2]))).chunk(2)
    return self.criterion(z1, z2)


class DCLPeer(SimCLRPeer):
  """SimCLR's peer with lightly's DCLLoss, or DCLWLoss at the config's dcl_sigma > 0 (the positives
  weighted by the negative von Mises-Fisher weights, detached)."""

  def build(self, initial):
    from lightly.loss import DCLLoss, DCLWLoss
    super().build(initial)
    t, sigma = self.config.temperature, self.config.dcl_sigma
    self.criterion = DCLWLoss(temperature=t, sigma=sigma) if sigma > 0 else DCLLoss(temperature=t)


class BYOLPeer(Peer):
  """lightly's BYOL: torchvision's ResNet, BYOLProjectionHead and BYOLPredictionHead, an EMA copy
  of the backbone and projector (update_momentum, cosine_schedule), NegativeCosineSimilarity; each
  view through the networks on its own, the target's in training mode without gradients.
  broken='ema_first': the EMA taken from the weights before the optimiser step."""
  BROKEN = ('ema_first',)

  def build(self, initial):
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead
    from lightly.models.utils import deactivate_requires_grad
    proj, pred = tuple(self.config.projection_dims), tuple(self.config.predictor_dims)
    self.backbone = torch_resnet(self.spec, initial)
    self.projector = BYOLProjectionHead(_feature_dim(initial), proj[0], proj[-1])
    self.predictor = BYOLPredictionHead(proj[-1], pred[0], pred[-1])
    load_head(self.projector, initial['params']['projector'], initial['batch_stats'].get('projector', {}))
    load_head(self.predictor, initial['params']['predictor'], initial['batch_stats'].get('predictor', {}))
    target = initial['method_state']['target']
    self.target_backbone = torch_resnet(self.spec, target)
    self.target_projector = copy.deepcopy(self.projector)
    load_head(self.target_projector, target['params']['projector'], target['batch_stats'].get('projector', {}))
    deactivate_requires_grad(self.target_backbone)
    deactivate_requires_grad(self.target_projector)
    self.criterion = NegativeCosineSimilarity()

  def trained(self):
    return [self.backbone, self.projector, self.predictor]

  def named(self):
    return {'backbone': self.backbone, 'projector': self.projector, 'predictor': self.predictor,
            'target.backbone': self.target_backbone, 'target.projector': self.target_projector}

  def tau(self, k):
    from lightly.utils.scheduler import cosine_schedule
    return cosine_schedule(k, self.total_steps + 1, self.config.base_tau, self.config.final_tau)

  def loss(self, k, views):
    import torch
    p1, p2 = (self.predictor(self.projector(self.backbone(x))) for x in views)
    with torch.no_grad():
      t1, t2 = (self.target_projector(self.target_backbone(x)) for x in views)
    return (2 + 2 * self.criterion(p1, t2)) + (2 + 2 * self.criterion(p2, t1))

  def _ema(self, k):
    from lightly.models.utils import update_momentum
    update_momentum(self.backbone, self.target_backbone, self.tau(k))
    update_momentum(self.projector, self.target_projector, self.tau(k))

  def before_step(self, k):
    if self.broken == 'ema_first':
      self._ema(k)

  def after_step(self, k):
    if self.broken != 'ema_first':
      self._ema(k)


class SimSiamPeer(Peer):
  """lightly's SimSiam: torchvision's ResNet, SimSiamProjectionHead (three Linear-BatchNorm layers,
  the last BatchNorm without affine), SimSiamPredictionHead, NegativeCosineSimilarity over both
  directions against the detached projections; each view through the networks on its own. The
  predictor at the peak learning rate throughout, as the paper's section 4.4 and solo-learn's
  static_lr (lightly's example decays it with the rest: the peer takes the authors' form).
  broken='no_stop_gradient': the projections not detached."""
  BROKEN = ('no_stop_gradient',)

  def build(self, initial):
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules.heads import SimSiamPredictionHead, SimSiamProjectionHead
    proj, pred = tuple(self.config.projection_dims), tuple(self.config.predictor_dims)
    assert len(proj) == 3 and proj[0] == proj[1] and len(pred) == 2, (proj, pred)
    self.backbone = torch_resnet(self.spec, initial)
    self.projector = SimSiamProjectionHead(_feature_dim(initial), proj[0], proj[-1])
    self.predictor = SimSiamPredictionHead(proj[-1], pred[0], pred[-1])
    for part in ('projector', 'predictor'):
      load_head(getattr(self, part), initial['params'][part], initial['batch_stats'].get(part, {}))
    self.criterion = NegativeCosineSimilarity()

  def trained(self):
    return [self.backbone, self.projector, self.predictor]

  def constant_lr(self):
    return [self.predictor] if self.config.predictor_constant_lr else []

  def named(self):
    return {'backbone': self.backbone, 'projector': self.projector, 'predictor': self.predictor}

  def loss(self, k, views):
    z1, z2 = (self.projector(self.backbone(x)) for x in views)
    p1, p2 = self.predictor(z1), self.predictor(z2)
    if self.broken != 'no_stop_gradient':
      z1, z2 = z1.detach(), z2.detach()
    return 0.5 * (self.criterion(p1, z2) + self.criterion(p2, z1))


class BarlowTwinsPeer(Peer):
  """lightly's Barlow Twins: torchvision's ResNet, BarlowTwinsProjectionHead, BarlowTwinsLoss
  (each dimension standardised over the batch, the cross-correlation driven to the identity) with
  the recipe's lambda, times the recipe's loss_scale (solo-learn's scale_loss; lightly's example
  has none); each view through the networks on its own. broken='joint_batchnorm': both views as
  one batch, their BatchNorm statistics shared."""
  BROKEN = ('joint_batchnorm',)

  def build(self, initial):
    from lightly.loss import BarlowTwinsLoss
    from lightly.models.modules.heads import BarlowTwinsProjectionHead
    proj = tuple(self.config.projection_dims)
    assert len(proj) == 3 and proj[0] == proj[1], proj
    self.backbone = torch_resnet(self.spec, initial)
    self.projector = BarlowTwinsProjectionHead(_feature_dim(initial), proj[0], proj[-1])
    load_head(self.projector, initial['params']['projector'], initial['batch_stats'].get('projector', {}))
    self.criterion = BarlowTwinsLoss(lambda_param=self.config.lambd)

  def trained(self):
    return [self.backbone, self.projector]

  def named(self):
    return {'backbone': self.backbone, 'projector': self.projector}

  def loss(self, k, views):
    import torch
    if self.broken == 'joint_batchnorm':
      z1, z2 = self.projector(self.backbone(torch.cat(views))).chunk(2)
    else:
      z1, z2 = (self.projector(self.backbone(x)) for x in views)
    return self.config.loss_scale * self.criterion(z1, z2)


PEERS = {'simclr': SimCLRPeer, 'byol': BYOLPeer, 'simsiam': SimSiamPeer, 'barlow_twins': BarlowTwinsPeer,
         'dcl': DCLPeer}


def our_state_names(ours_state: dict, spec: dict) -> dict:
  """A run_ours state under the peer's names (the EMA target's as target.*)."""
  out = torch_names(ours_state, spec)
  target = ours_state['method_state'].get('target')
  if target:
    out.update(torch_names(target, spec, ('encoder', 'projector'), prefix='target.'))
  return out


def differences(states: list, reference: list, ours: dict) -> dict:
  """{part: the largest difference between states and reference (lists of states under the
  peer's names, one per step) over the steps, relative to how far ours moved the array from the
  start}. Parts: each module's parameters ('backbone', 'projector', 'target.backbone', ...),
  'running_mean' and 'running_var' (BatchNorm's, every module's)."""
  start = our_state_names(ours['initial'], ours['spec'])
  moved_by_ours = [our_state_names(s, ours['spec']) for s in ours['states']]
  out = {}
  for mine, theirs, moved_to in zip(states, reference, moved_by_ours):
    assert set(mine) == set(theirs) == set(start), sorted(set(mine) ^ set(theirs))
    for name, a in mine.items():
      b = theirs[name]
      assert a.shape == b.shape, (name, a.shape, b.shape)
      leaf = name.rsplit('.', 1)[-1]
      part = leaf if leaf in ('running_mean', 'running_var') else '.'.join(
          name.split('.')[:2 if name.startswith('target.') else 1])
      moved = float(np.abs(moved_to[name] - start[name]).max())
      diff = float(np.abs(np.asarray(a, np.float64) - b).max())
      rel = diff / max(moved, 1e-6 * max(1.0, float(np.abs(b).max()))) if diff else 0.0
      out[part] = max(out.get(part, 0.0), rel)
  return out


def loss_differences(losses: list, reference: list) -> list:
  """Each step's relative difference of two runs' losses."""
  return [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, reference)]


def named_states(ours: dict) -> list:
  """run_ours' states under the peer's names."""
  return [our_state_names(s, ours['spec']) for s in ours['states']]


def failures(ours: dict, run: dict, exact: dict, peer32: dict) -> list:
  """What fails the comparison of ours with a peer's run (the float32 peer, or a broken variant):
  steps whose losses differ by more than LOSS_BOUND, parts further from the float64 peer (from
  the variant, for a variant) than RATIO_BOUND times the float32 peer's own distance from the
  float64 peer, or FLOOR of the change where that is larger."""
  losses = loss_differences(ours['losses'], run['losses'])
  mine = differences(named_states(ours), exact['states'] if run is peer32 else run['states'], ours)
  rounding = differences(peer32['states'], exact['states'], ours)
  return ([f'step {k} loss {d:.2g}' for k, d in enumerate(losses) if d > LOSS_BOUND] +
          [f'{p} {v:.2g}' for p, v in mine.items() if v > max(RATIO_BOUND * rounding[p], FLOOR)])


def table(ours: dict, exact: dict, peer32: dict) -> str:
  """The comparison as markdown: each step's losses (ours, the float32 and float64 peers'), then
  each part's largest difference from the float64 peer, ours beside the float32 peer's, against
  its bound."""
  lines = ['| step | ours | float32 peer | float64 peer | ours vs float32 peer, relative |', '|---|---|---|---|---|']
  for k, (a, b, c) in enumerate(zip(ours['losses'], peer32['losses'], exact['losses'])):
    lines.append(f'| {k} | {a:.7f} | {b:.7f} | {c:.7f} | {abs(a - b) / max(abs(b), 1e-12):.2g} |')
  mine = differences(named_states(ours), exact['states'], ours)
  rounding = differences(peer32['states'], exact['states'], ours)
  lines += ['', '| part | ours vs float64 peer | float32 peer vs float64 peer | bound | within |', '|---|---|---|---|---|']
  for part, v in mine.items():
    bound = max(RATIO_BOUND * rounding[part], FLOOR)
    lines.append(f'| {part} | {100 * v:.3g}% | {100 * rounding[part]:.3g}% | {100 * bound:.3g}% | '
                 f'{"yes" if v <= bound else "NO"} |')
  lines.append('(arrays: the largest difference over the steps, as a share of how far our step moved the array)')
  return '\n'.join(lines)
