"""Each method's whole training step against a PyTorch peer from lightly's pieces
(tests/peers/lightly_peer.py): the same initial weights, views and optimiser, step by step, on the
tests' network (a ResNet of one torchvision BasicBlock per stage at width 0.125, CIFAR stem)."""
import os
import sys

import pytest

from conftest import DATA_DIR, DATASET, ROOT
import lightly_peer
from simclr_jax.data import registry

pytestmark = pytest.mark.slow
STEPS = 4  # the first at learning rate 0 (the warmup's start), then three that move the weights
# What each comparison covers (differences() also holds both sides to the same array names).
PARTS = {'simclr': {'backbone', 'projector', 'running_mean', 'running_var'}}
PARTS.update(barlow_twins=PARTS['simclr'], dcl=PARTS['simclr'], simsiam=PARTS['simclr'] | {'predictor'},
             byol=PARTS['simclr'] | {'predictor', 'target.backbone', 'target.projector'})


@pytest.fixture(scope='module')
def runs():
  """(ours, the float64 peer's run, the float32 peer's) for each method, computed once."""
  train = registry.load(DATASET, DATA_DIR, train_limit=lightly_peer.PEER_FIELDS['batch_size'], test_split='').train
  cache = {}

  def get(method):
    if method not in cache:
      config = lightly_peer.peer_config(method, {'dataset': DATASET, 'data_dir': DATA_DIR})
      ours = lightly_peer.run_ours(config, train.images, train.labels, steps=STEPS)
      exact = lightly_peer.PEERS[method](ours, dtype='float64').run(ours['views'])
      cache[method] = ours, exact, lightly_peer.PEERS[method](ours).run(ours['views'])
      print(lightly_peer.table(*cache[method]))
    return cache[method]
  return get


@pytest.mark.parametrize('method', sorted(lightly_peer.PEERS))
def test_the_whole_step_equals_lightlys(runs, method):
  ours, exact, peer32 = runs(method)
  assert ours['losses'][0] != ours['losses'][-1]  # the steps moved the weights
  assert set(lightly_peer.differences(peer32['states'], exact['states'], ours)) == PARTS[method]
  assert lightly_peer.failures(ours, peer32, exact, peer32) == []


@pytest.mark.parametrize('method,broken,caught', [('simclr', 'per_view', 'step 0 loss'),
                                                  ('byol', 'ema_first', 'target.backbone'),
                                                  ('simsiam', 'no_stop_gradient', 'backbone'),
                                                  ('barlow_twins', 'joint_batchnorm', 'step 0 loss'),
                                                  ('dcl', 'per_view', 'step 0 loss')])
def test_a_broken_peer_fails_the_comparison(runs, method, broken, caught):
  """BatchNorm per view in SimCLR and DCLW, or over both views in Barlow Twins, changes the loss at the
  first step; the EMA taken before the optimiser step changes BYOL's target; SimSiam without its
  stop-gradient moves the encoder another way."""
  ours, exact, peer32 = runs(method)
  found = lightly_peer.failures(ours, lightly_peer.PEERS[method](ours, broken).run(ours['views']), exact, peer32)
  assert any(f.startswith(caught) for f in found), found


def test_peer_check_prints_the_table_and_the_verdict_and_refuses_what_it_cannot_run(runs, capsys):
  """scripts/peer_check.py on SimCLR (the program the comparison above compiled): each step's
  losses, each part against its bound, the verdict, and the broken variant caught; a variant the
  method has not and a single step are refused naming them."""
  runs('simclr')
  sys.path.insert(0, os.path.join(ROOT, 'scripts'))
  import peer_check
  data = [f'--dataset={DATASET}', f'--data_dir={DATA_DIR}']
  assert peer_check.main(['--method=simclr', '--steps=2', '--broken=per_view'] + data) == 0
  out = capsys.readouterr().out
  assert '| step | ours | float32 peer | float64 peer |' in out and '| 1 |' in out and '| 2 |' not in out
  assert '| backbone |' in out and 'within every bound' in out and 'broken peer (per_view): caught: step 0 loss' in out
  for argv, culprit in ((['--method=simclr', '--broken=ema_first'], 'simclr has no such variant: choose from per_view'),
                        (['--method=byol', '--steps=1'], '--steps=1')):
    with pytest.raises(SystemExit):
      peer_check.parse_args(argv)
    assert culprit in capsys.readouterr().err
