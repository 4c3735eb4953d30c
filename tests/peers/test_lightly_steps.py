"""Each method's whole training step against a PyTorch peer from lightly's pieces
(tests/peers/lightly_peer.py): the same initial weights, views and optimiser, step by step, on the
tests' network: a ResNet of one torchvision BasicBlock per stage at width 0.125, CIFAR stem)."""
import pytest

from conftest import DATA_DIR, DATASET, tiny_config
import lightly_peer
from simclr_jax.data import registry

pytestmark = pytest.mark.slow
STEPS = 4  # the first at learning rate 0 (the warmup's start), then three that move the weights
# Narrow heads, and learning rates (x 16/256) at which these tiny networks are stable enough in
# float32 to compare 3 moving steps. BYOL's steps are the more sensitive to rounding (BatchNorm over
# 16 images per view, through two networks): at 0.03 its own float32 and float64 peers part by 1e-4
# in the loss at the fourth step, and ours from the float32 peer by 5e-5 on one machine and 1.5e-4
# on another; at 0.01 both stay below 2e-5 over these steps.
FIELDS = {**lightly_peer.PEER_FIELDS, 'projection_dims': (64, 32)}
PER_METHOD = {'simclr': {'learning_rate': 0.03},
              'byol': {'learning_rate': 0.01, 'predictor_dims': (64, 32), 'base_tau': 0.9}}
LOSS_BOUND = 1e-4  # relative, every step (they agree to 1.2e-5 or better)
# The arrays: float32 rounding alone moves them by a share of their change that can be large
# (BatchNorm biases sum gradients that cancel: after 3 steps the peer's float32 target is 3% of
# the change from its float64 one). The peer's BatchNorm computes its variance in one pass as
# Flax's does (lightly_peer.one_pass_batchnorm), so that the float32 peer rounds as ours does. Ours
# is held to the float64 peer within RATIO_BOUND times the float32 peer's own distance from it, or
# FLOOR of the change where that is larger: another valid float32 order is that far off too (our
# step compiled without LLVM's optimisations puts BYOL's encoder 1.8% of its change from the
# float64 peer, where the float32 peer is 0.18% away), and a broken variant is off by its whole
# change.
RATIO_BOUND, FLOOR = 10.0, 5e-2


@pytest.fixture(scope='module')
def runs():
  """(ours, the float64 peer's run, the float32 peer's) for each method, computed once."""
  train = registry.load(DATASET, DATA_DIR, train_limit=FIELDS['batch_size'], test_split='').train
  cache = {}

  def get(method):
    if method not in cache:
      ours = lightly_peer.run_ours(tiny_config(method, **{**FIELDS, **PER_METHOD[method]}), train.images, train.labels,
                                   steps=STEPS)
      exact = lightly_peer.PEERS[method](ours, dtype='float64').run(ours['views'])
      cache[method] = ours, exact, lightly_peer.PEERS[method](ours).run(ours['views'])
    return cache[method]
  return get


def failures(ours, run, exact, peer32) -> list:
  """What fails the comparison of ours with a peer's run: steps whose losses differ by more than
  LOSS_BOUND, parts further from the float64 peer than RATIO_BOUND times the float32 peer's own
  distance from it (or FLOOR)."""
  losses = lightly_peer.loss_differences(ours['losses'], run['losses'])
  mine = lightly_peer.differences(lightly_peer.named_states(ours), exact['states'] if run is peer32 else run['states'],
                                  ours)
  rounding = lightly_peer.differences(peer32['states'], exact['states'], ours)
  print('losses', losses, '\nparts', mine, '\nfloat32 rounding', rounding)
  return ([f'step {k} loss {d:.2g}' for k, d in enumerate(losses) if d > LOSS_BOUND] +
          [f'{p} {v:.2g}' for p, v in mine.items() if v > max(RATIO_BOUND * rounding[p], FLOOR)])


@pytest.mark.parametrize('method', sorted(lightly_peer.PEERS))
def test_the_whole_step_equals_lightlys(runs, method):
  ours, exact, peer32 = runs(method)
  assert ours['losses'][0] != ours['losses'][-1]  # the steps moved the weights
  expected = {'backbone', 'projector', 'running_mean', 'running_var'} | (
      {'predictor', 'target.backbone', 'target.projector'} if method == 'byol' else set())
  assert set(lightly_peer.differences(peer32['states'], exact['states'], ours)) == expected
  assert failures(ours, peer32, exact, peer32) == []


@pytest.mark.parametrize('method,broken,caught', [('simclr', 'per_view', 'step 0 loss'),
                                                  ('byol', 'ema_first', 'target.backbone')])
def test_a_broken_peer_fails_the_comparison(runs, method, broken, caught):
  """BatchNorm per view in SimCLR changes the loss at the first step; the EMA taken before the
  optimiser step changes BYOL's target."""
  ours, exact, peer32 = runs(method)
  found = failures(ours, lightly_peer.PEERS[method](ours, broken).run(ours['views']), exact, peer32)
  assert any(f.startswith(caught) for f in found), found
