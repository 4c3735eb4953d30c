"""The methods: each loss against a float64 NumPy version written from its paper (tests/oracles.py),
the EMA update and its schedule, the collapse statistics, and every method training from its
config, resuming bit-identically and matching on 4 devices."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import oracles
import oracles_multicrop
import chunk_check
from conftest import MECHANICS, ROOT, device_env, small_config, tiny_config
from simclr_jax import methods
from simclr_jax.core.errors import ConfigError
from simclr_jax.stages import pretrain, runner
from simclr_jax.data.views import Crops
from simclr_jax.methods.base import Group, Method, l2_normalize
from simclr_jax.methods.simclr import nt_xent
from simclr_jax.models.losses import distillation_loss

METHODS = list(methods.NAMES) + ['dino@vit']  # DINO on a ViT (local crops, EMA teacher); MAE is ViT-only


def _rng(seed=0):
  return np.random.default_rng(seed)


def _pair(rng, n=48, d=24):
  """Two correlated views' embeddings [n, d] each, and both interleaved as the step holds them."""
  a = rng.normal(size=(n, d))
  b = a + 0.5 * rng.normal(size=(n, d))
  both = np.empty((2 * n, d))
  both[0::2], both[1::2] = a, b
  return a, b, both


def _method(name, **fields):
  return methods.get(name)(tiny_config(name, **fields), total_steps=100)


def _views(both):
  """Interleaved rows (2k, 2k+1: image k's two views) as the step holds them: [2, n, ...]."""
  return jnp.stack([jnp.asarray(both[0::2], jnp.float32), jnp.asarray(both[1::2], jnp.float32)])


def _out(**outputs):
  """A model's outputs on the two views: {'global': {name: [2, n, d]}} from interleaved rows."""
  return {'global': {k: _views(v) for k, v in outputs.items()}}


@pytest.mark.parametrize('t', [0.5, 0.2])
def test_simclr_nt_xent_matches_the_paper_and_optax(t):
  z = _pair(_rng())[2].astype(np.float32)
  ours = float(nt_xent(jnp.asarray(z[0::2]), jnp.asarray(z[1::2]), t))
  assert abs(ours - oracles.nt_xent(z, t)) < 1e-5
  import optax
  assert abs(ours - float(optax.ntxent(jnp.asarray(z), jnp.arange(len(z)) // 2, t))) < 1e-5
  loss, _, _ = _method('simclr', temperature=t).loss(None, _out(projection=z), {}, None, 0)
  assert abs(float(loss) - oracles.nt_xent(z, t)) < 1e-5


@pytest.mark.parametrize('t,sigma', [(0.1, 0.0), (0.1, 0.5), (0.5, 1.0)])
def test_dcl_and_dclw_match_the_paper(t, sigma):
  """DCL's loss (and DCLW's with sigma) against the float64 version from the paper's Eq. 6; the
  positive pair is out of the denominator (NT-Xent less its positive term in the log-sum), and
  DCLW's weights are constants for the gradient."""
  from simclr_jax.methods.dcl import dcl
  a, b, both = _pair(_rng(11))
  loss, _, _ = _method('dcl', temperature=t, dcl_sigma=sigma).loss(None, _out(projection=both), {}, None, 0)
  assert abs(float(loss) - oracles.dcl(a, b, t, sigma or None)) < 1e-5 * max(1.0, abs(oracles.dcl(a, b, t, sigma or None)))
  assert abs(oracles.dcl(a, b, t) - oracles.nt_xent(both, t)) > 1e-3  # not NT-Xent
  if sigma:  # the weights' gradient is stopped: d/dz equals that of the loss with the weights fixed
    z1, z2 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    n = len(a)
    s = jnp.sum(l2_normalize(z1) * l2_normalize(z2), -1)
    w = 2 - n * jax.nn.softmax(s / sigma)
    fixed = lambda z1: dcl(z1, z2, t) + jnp.mean((1 - w) * jnp.sum(l2_normalize(z1) * l2_normalize(z2), -1)) / t
    assert np.allclose(jax.grad(lambda z1: dcl(z1, z2, t, sigma))(z1), jax.grad(fixed)(z1), atol=1e-5)


def test_mocov3_infonce_matches_the_authors_code():
  rng = _rng(1)
  _, _, q = _pair(rng)
  _, _, k = _pair(rng)
  method = _method('mocov3', temperature=0.2)
  method.target_projections = lambda model, state, views: ({'global': _views(k)}, state)
  loss, _, _ = method.loss(None, _out(prediction=q), {}, None, 0)
  want = oracles.infonce_mocov3(q[0::2], q[1::2], k[0::2], k[1::2], 0.2)
  assert abs(float(loss) - want) < 1e-5 * abs(want)


def test_mocov2plus_scores_each_query_against_the_other_views_queue_and_enqueues_the_keys():
  """MoCo v2+'s loss against the float64 version of the paper's InfoNCE with a queue; after the
  loss the global batch's keys of each view sit at the pointer of that view's queue, the pointer
  moves on by the batch and wraps at the queue's end, and the queues start as unit vectors."""
  from simclr_jax.methods.mocov2plus import enqueue
  rng = _rng(12)
  method = _method('mocov2plus', projection_dims=(32, 8), queue_size=24, batch_size=8, temperature=0.2)
  state = method.init_state({'params': {'encoder': {}, 'projector': {}}, 'batch_stats': {'encoder': {}, 'projector': {}}})
  assert state['queue'].shape == (2, 24, 8) and np.allclose(np.linalg.norm(state['queue'], axis=-1), 1, atol=1e-5)
  q, k = rng.normal(size=(2, 8, 8)), rng.normal(size=(2, 8, 8))
  method.target_projections = lambda model, state, views: ({'global': jnp.asarray(k, jnp.float32)}, state)
  state = {**state, 'queue_pointer': jnp.int32(16)}
  loss, new, metrics = method.loss(None, {'global': {'projection': jnp.asarray(q, jnp.float32)}}, state, None, 0)
  queue = np.asarray(state['queue'], np.float64)
  expected = oracles.moco_queue(q[0], q[1], k[0], k[1], queue[0], queue[1], 0.2)
  assert abs(float(loss) - expected) < 1e-5 * expected and 'tau' in metrics
  unit = k / np.linalg.norm(k, axis=-1, keepdims=True)
  assert np.allclose(new['queue'][:, 16:], unit, atol=1e-6) and np.array_equal(new['queue'][:, :16], queue[:, :16])
  assert int(new['queue_pointer']) == 0  # 16 + 8 wraps at 24
  _, pointer = enqueue(new['queue'], new['queue_pointer'], jnp.asarray(unit, jnp.float32))
  assert int(pointer) == 8
  with pytest.raises(ConfigError, match='config.queue_size=20 is invalid: use a multiple of batch_size=8'):
    methods.get('mocov2plus').validate(tiny_config('mocov2plus', queue_size=20, batch_size=8))


def test_the_oracles_agree_with_their_term_by_term_twins():
  """Each float64 oracle against its second, naive version (Python floats, loops) and its invariants."""
  oracles._self_check()
  oracles_multicrop._self_check()


def test_nnclr_takes_the_nearest_support_row_as_the_positive_and_enqueues_the_first_view():
  """NNCLR's loss against the float64 version from the paper (Eq. 1-2 and Algorithm 1); the
  support set's nearest row replaces each view's projection, and after the loss the global batch's
  normalised first-view projections sit at the pointer, which moves on by the batch and wraps."""
  rng = _rng(13)
  method = _method('nnclr', projection_dims=(32, 8), predictor_dims=(16, 8), queue_size=24, batch_size=8,
                   temperature=0.2)
  state = method.init_state({})
  assert state['support'].shape == (24, 8) and np.allclose(np.linalg.norm(state['support'], axis=-1), 1, atol=1e-5)
  z, p = rng.normal(size=(2, 8, 8)), rng.normal(size=(2, 8, 8))
  support = np.asarray(state['support'], np.float64)
  support[5] = z[1][3] / np.linalg.norm(z[1][3])  # image 3's second view finds itself
  state = {'support': jnp.asarray(support, jnp.float32), 'support_pointer': jnp.int32(16)}
  out = {'global': {'projection': jnp.asarray(z, jnp.float32), 'prediction': jnp.asarray(p, jnp.float32)}}
  loss, new, _ = method.loss(None, out, state, None, 0)
  expected = oracles_multicrop.nnclr(p[0], p[1], z[0], z[1], support, 0.2)
  assert abs(float(loss) - expected) < 1e-5 * expected
  assert oracles_multicrop.nnclr_neighbours(z[1], support)[3] == 5
  unit = z[0] / np.linalg.norm(z[0], axis=-1, keepdims=True)
  assert np.allclose(new['support'][16:], unit, atol=1e-6) and np.array_equal(new['support'][:16], support[:16].astype(np.float32))
  assert int(new['support_pointer']) == 0  # 16 + 8 wraps at 24
  with pytest.raises(ConfigError, match='config.queue_size=20 is invalid: use a multiple of batch_size=8'):
    methods.get('nnclr').validate(tiny_config('nnclr', queue_size=20, batch_size=8))


def test_dino_matches_the_paper_on_multi_crop_and_moves_its_centre():
  """DINO's loss against the float64 version of the paper's Eq. 3 and Algorithm 1 with 2 global
  and 3 local student views: the teacher (the EMA network, on the global views only) centred and
  sharpened, every (teacher view, other student view) pair; the centre's EMA over the global
  views and the batch; the teacher temperature's warm-up, one value an epoch."""
  rng = _rng(14)
  method = _method('dino', projection_dims=(16, 8), num_prototypes=12, student_temperature=0.1,
                   teacher_temperature=0.07, warmup_teacher_temperature=0.04, warmup_teacher_temperature_epochs=3,
                   center_momentum=0.9, epochs=10)
  assert method.steps_per_epoch == 10  # total_steps=100 over 10 epochs
  student = rng.normal(size=(5, 6, 12))
  teacher = rng.normal(size=(2, 6, 12))
  center = 0.1 * rng.normal(size=12)
  seen = {}

  def target_projections(model, state, views):
    seen['teacher_views'] = sorted(views)
    return {'global': jnp.asarray(teacher, jnp.float32)}, state
  method.target_projections = target_projections
  out = {'global': {'projection': jnp.asarray(student[:2], jnp.float32)},
         'local': {'projection': jnp.asarray(student[2:], jnp.float32)}}
  views = {'global': jnp.zeros((2, 6, 4, 4, 3)), 'local': jnp.zeros((3, 6, 2, 2, 3))}
  for step, temperature in ((0, 0.04), (9, 0.04), (10, 0.055), (25, 0.07), (99, 0.07)):
    loss, new, metrics = method.loss(None, out, {'center': jnp.asarray(center, jnp.float32)}, views, step)
    expected = oracles_multicrop.dino(student, teacher, center, 0.1, temperature)
    assert abs(float(loss) - expected) < 1e-5 * expected, step
    assert float(metrics['teacher_temperature']) == pytest.approx(temperature)
  assert seen['teacher_views'] == ['global']
  np.testing.assert_allclose(new['center'], oracles_multicrop.dino_center(center, teacher, 0.9), rtol=1e-5, atol=1e-7)
  with pytest.raises(ConfigError, match="config.finetune_from_head_layer=1 is invalid: DINO's head"):
    methods.get('dino').validate(tiny_config('dino', finetune_from_head_layer=1))


def test_dino_prototypes_are_unit_columns_frozen_for_their_first_epoch():
  """The head's last layer is weight-normalised with its gain fixed at 1 (every prototype a unit
  column, so the logits are cosines of the normalised bottleneck), and the optimiser leaves the
  prototypes alone for freeze_prototypes_epochs epochs while the rest of the head trains; then
  they take the run's learning rate of that step (the warm-up's schedule goes on while they wait)."""
  from simclr_jax.methods.dino import DINOHead
  config = tiny_config('dino', freeze_prototypes_epochs=1, epochs=4, optimizer='sgd', weight_decay=0.0,
                       momentum=0.0, warmup_epochs=1.0, learning_rate=0.4, lr_scaling='none')
  method = methods.get('dino')(config, total_steps=8)
  assert method.param_groups() == {'projector/prototypes': Group(frozen_steps=2)}
  head = DINOHead((16, 8, 12))
  h = jnp.asarray(_rng(15).normal(size=(4, 10)), jnp.float32)
  variables = head.init(jax.random.PRNGKey(0), h)
  logits, hiddens = head.apply(variables, h)
  kernel = variables['params']['prototypes']['kernel']
  bottleneck = l2_normalize(hiddens[-1])
  np.testing.assert_allclose(logits, bottleneck @ (kernel / jnp.linalg.norm(kernel, axis=0)), rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(logits).max()) <= 1.0 + 1e-6
  params = {'encoder': {'w': jnp.ones((2, 3))}, 'projector': variables['params']}
  grads = jax.tree.map(jnp.ones_like, params)
  opt = runner.optimizer(config, 8, 2)
  assert opt.schedule.warmup_steps == 2  # the learning rate rises over steps 0 and 1, then decays
  tx = pretrain.make_tx(opt, config.online_probe_learning_rate, method.param_groups())
  opt_state = tx.init(params)
  for step in range(6):
    updates, opt_state = tx.update(grads, opt_state, params)
    lr = float(opt.schedule(step))
    prototypes = np.asarray(updates['projector']['prototypes']['kernel'])
    np.testing.assert_allclose(updates['projector']['dense_0']['kernel'], -lr, rtol=1e-6)  # the head trains
    np.testing.assert_allclose(prototypes, 0.0 if step < 2 else -lr, rtol=1e-6, err_msg=f'step {step}')


def test_swav_sinkhorn_and_swapped_prediction_match_the_paper_with_and_without_its_queue():
  """SwAV's codes (Sinkhorn-Knopp, 3 iterations at epsilon 0.05) and its loss on 2 global and 3
  local crops against the float64 versions from the paper; from epoch queue_start_epochs, once
  it is full, the queue's embeddings, scored with the current prototypes, join each global view's
  Sinkhorn-Knopp (only the batch's codes used); each step pushes the global views' normalised
  embeddings to the queue's front; the prototypes stay frozen for their first epochs; a queue
  smaller than the batch is refused."""
  from simclr_jax import models
  from simclr_jax.methods.swav import sinkhorn
  rng = _rng(16)
  scores = np.tanh(rng.normal(size=(6, 10)))  # cosines
  np.testing.assert_allclose(sinkhorn(jnp.asarray(scores, jnp.float32), 0.05, 3),
                             oracles_multicrop.sinkhorn(scores, 0.05, 3), rtol=1e-4, atol=1e-6)
  config = tiny_config('swav', projection_dims=(16, 8), num_prototypes=10, temperature=0.1, queue_size=12,
                       queue_start_epochs=2, freeze_prototypes_epochs=1, epochs=10, batch_size=6)
  method = methods.get('swav')(config, total_steps=100)
  assert method.param_groups() == {'predictor': Group(frozen_steps=10)}
  model = method.make_model(models.encoder_for('resnet10', 0.125, 'float32', 'cifar', (32, 32, 3)))
  params = models.init_variables(model, 0, (32, 32, 3))['params']
  student = np.tanh(rng.normal(size=(5, 6, 10)))
  z = rng.normal(size=(2, 6, 8))
  queue = rng.normal(size=(2, 12, 8))
  queue /= np.linalg.norm(queue, axis=-1, keepdims=True)
  out = {'global': {'prediction': jnp.asarray(student[:2], jnp.float32), 'projection': jnp.asarray(z, jnp.float32)},
         'local': {'prediction': jnp.asarray(student[2:], jnp.float32)}}
  state = {'queue': jnp.asarray(queue, jnp.float32)}
  kernel = np.asarray(params['predictor']['prototypes']['kernel'], np.float64)
  queued = queue @ (kernel / np.linalg.norm(kernel, axis=0))  # [2, 12, 10]
  for step in (0, 19, 20, 50):  # the queue joins at epoch 2 = step 20
    loss, new, _ = method.loss(model, out, state, None, step, params)
    if step < 20:
      expected = oracles_multicrop.swav(student, 0.05, 3, 0.1)
    else:
      codes = [oracles_multicrop.sinkhorn(np.concatenate([student[i], queued[i]]), 0.05, 3)[:6] for i in range(2)]
      log_p = [s / 0.1 - np.log(np.sum(np.exp(s / 0.1), axis=-1, keepdims=True)) for s in student]
      expected = np.mean([np.mean([-np.mean(np.sum(codes[i] * log_p[v], -1)) for v in range(5) if v != i])
                          for i in range(2)])
      assert abs(expected - oracles_multicrop.swav(student, 0.05, 3, 0.1)) > 1e-4  # the queue changed the codes
    assert abs(float(loss) - expected) < 1e-4 * expected, step
  not_full = {'queue': state['queue'].at[:, -1].set(0.0)}  # the last row not written yet: not used
  loss, _, _ = method.loss(model, out, not_full, None, 50, params)
  assert abs(float(loss) - oracles_multicrop.swav(student, 0.05, 3, 0.1)) < 1e-4 * float(loss)
  unit = z / np.linalg.norm(z, axis=-1, keepdims=True)
  np.testing.assert_allclose(new['queue'][:, :6], unit, rtol=1e-5, atol=1e-6)  # the newest first
  np.testing.assert_array_equal(new['queue'][:, 6:], queue[:, :6].astype(np.float32))  # the oldest out
  with pytest.raises(ConfigError, match='config.queue_size=32 is invalid: use 0 .no queue. or at least batch_size=64'):
    methods.get('swav').validate(tiny_config('swav', queue_size=32, batch_size=64))


def test_multi_crop_views_follow_the_local_fields_and_bad_ones_are_refused():
  """local_crops small crops of local_crop_size px with the first view's settings changed by
  local_view; none without them; a bad local_view value is one line naming it."""
  from simclr_jax.data import augment
  from simclr_jax.validate import validate_config
  first, second = augment.AugmentSettings(), augment.AugmentSettings(solarize_prob=0.2)
  assert methods.get('dino')(tiny_config('dino')).views(first, second) == (Crops('global', 0, (first, second)),)
  config = tiny_config('dino_multicrop')
  spec = methods.get('dino')(config).views(first, second)
  local = first._replace(crop_scale=(0.08, 0.5), brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
                         blur_prob=0.1, solarize_prob=0.1)
  assert spec == (Crops('global', 0, (first, second)), Crops('local', 18, (local,) * 6))
  assert tiny_config('dino').local_view.brightness is None  # the recipe's changes stay in its config
  with pytest.raises(ConfigError, match=r'config.local_view.crop_scale=\(0.5, 0.2\) is invalid'):
    validate_config(tiny_config('dino', **{'local_view.crop_scale': (0.5, 0.2)}))
  with pytest.raises(ConfigError, match='config.local_crops=-1 is invalid'):
    validate_config(tiny_config('dino', local_crops=-1))


def test_byol_regression_matches_the_paper():
  rng = _rng(2)
  _, _, p = _pair(rng)
  _, _, t = _pair(rng)
  method = _method('byol')
  method.target_projections = lambda model, state, views: ({'global': _views(t)}, state)
  loss, _, metrics = method.loss(None, _out(prediction=p), {}, None, 30)
  assert abs(float(loss) - oracles.byol(p[0::2], p[1::2], t[0::2], t[1::2])) < 1e-5
  assert abs(float(metrics['tau']) - oracles.byol_tau(30, 100)) < 1e-7


def test_simsiam_negative_cosine_matches_the_paper():
  rng = _rng(3)
  _, _, p = _pair(rng)
  _, _, z = _pair(rng)
  loss, _, _ = _method('simsiam').loss(None, _out(prediction=p, projection=z), {}, None, 0)
  assert abs(float(loss) - oracles.simsiam(p[0::2], p[1::2], z[0::2], z[1::2])) < 1e-6


@pytest.mark.parametrize('n', [2, 3, 4])
def test_fastsiam_predicts_the_mean_of_the_other_views_as_the_paper(n):
  rng = _rng(6)
  p, z = rng.normal(size=(n, 20, 12)), rng.normal(size=(n, 20, 12)) + 0.5 * rng.normal(size=(1, 20, 12))
  method = _method('fastsiam', num_views=n)
  out = {'global': {'prediction': jnp.asarray(p, jnp.float32), 'projection': jnp.asarray(z, jnp.float32)}}
  loss, _, _ = method.loss(None, out, {}, None, 0)
  assert abs(float(loss) - oracles.fastsiam(list(p), list(z))) < 1e-6
  if n == 2:  # two views: SimSiam's symmetrised loss
    assert abs(float(loss) - oracles.simsiam(p[0], p[1], z[0], z[1])) < 1e-6
  grad = jax.grad(lambda z: method.loss(None, {'global': {**out['global'], 'projection': z}}, {}, None, 0)[0])(
      out['global']['projection'])
  assert float(jnp.abs(grad).max()) == 0.0  # the targets are stop-gradient
  assert [g.count for g in method.views('a', 'b')] == [n]


def test_simsiam_gradient_stops_at_the_projection_it_predicts():
  method = _method('simsiam')
  _, _, p = _pair(_rng(4))
  _, _, z = _pair(_rng(5))
  grad = jax.grad(lambda z: method.loss(None, {'global': {'prediction': _views(p), 'projection': z}},
                                        {}, None, 0)[0])(_views(z))
  assert float(jnp.abs(grad).max()) == 0.0


@pytest.mark.parametrize('lambd,scale', [(0.0051, 0.1), (0.02, 1.0)])
def test_barlow_twins_cross_correlation_matches_the_paper(lambd, scale):
  _, _, z = _pair(_rng(6), n=64, d=32)
  loss, _, _ = _method('barlow_twins', lambd=lambd, loss_scale=scale).loss(None, _out(projection=z), {}, None, 0)
  want = oracles.barlow_twins(z[0::2], z[1::2], lambd, scale)
  assert abs(float(loss) - want) < 1e-4 * abs(want)


@pytest.mark.parametrize('weights', [(25.0, 25.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)])
def test_vicreg_matches_the_paper(weights):
  z = 0.5 * _pair(_rng(10), n=64, d=32)[2]  # deviations below 1: the variance hinge is active
  sim, var, cov = weights
  loss, _, _ = _method('vicreg', sim_weight=sim, var_weight=var, cov_weight=cov).loss(
      None, _out(projection=z), {}, None, 0)
  want = oracles.vicreg(z[0::2], z[1::2], sim, var, cov)
  assert want > 0.01 and abs(float(loss) - want) < 1e-5 * max(1.0, abs(want))


def test_the_ema_update_and_its_cosine_schedule_follow_the_formula():
  method = _method('byol')
  rng = _rng(7)
  variables = {c: {k: {'w': rng.normal(size=(3, 4)).astype(np.float32)} for k in ('encoder', 'projector', 'predictor')}
               for c in ('params', 'batch_stats')}
  state = method.init_state(variables)
  assert set(state['target']['params']) == {'encoder', 'projector'}  # no predictor in the target
  online = {k: {'w': rng.normal(size=(3, 4)).astype(np.float32)} for k in ('encoder', 'projector', 'predictor')}
  for step in (0, 37, 100):
    updated = method.update(state, online, jnp.asarray(step))
    tau = oracles.byol_tau(step, 100)
    want = oracles.ema(state['target']['params'], {k: online[k] for k in ('encoder', 'projector')}, tau)
    for k in ('encoder', 'projector'):
      np.testing.assert_allclose(updated['target']['params'][k]['w'], want[k]['w'], rtol=1e-6, atol=1e-7)
    assert updated['target']['batch_stats'] is state['target']['batch_stats']  # statistics: not averaged


def test_the_simsiam_predictor_keeps_the_peak_learning_rate_while_the_rest_follows_the_schedule():
  """The paper's section 4.4: the predictor's learning rate is not decayed (nor warmed up)."""
  config = tiny_config('simsiam', optimizer='sgd', momentum=0.0, weight_decay=0.0, learning_rate=0.4,
                       lr_scaling='none', epochs=4, warmup_epochs=1.0)
  assert methods.get('simsiam')(config).param_groups() == {'predictor': Group(constant_lr=True)}
  params = {k: {'w': jnp.ones((2, 3))} for k in ('encoder', 'projector', 'predictor')}
  grads = jax.tree.map(jnp.ones_like, params)
  for constant in ({}, {'predictor': Group(constant_lr=True)}):
    opt = runner.optimizer(config, 10 * config.epochs, 10)
    tx, schedule = pretrain.make_tx(opt, config.online_probe_learning_rate, constant), opt.schedule
    opt_state = tx.init(params)
    for step in range(40):
      updates, opt_state = tx.update(grads, opt_state, params)
      lr = {k: -float(v['w'][0, 0]) for k, v in updates.items()}
      assert lr['encoder'] == pytest.approx(float(schedule(step)), abs=1e-7)
      assert lr['projector'] == lr['encoder']
      assert lr['predictor'] == (pytest.approx(0.4) if constant else lr['encoder']), (step, constant)
  assert methods.get('simsiam')(tiny_config('simsiam', predictor_constant_lr=False)).param_groups() == {}
  assert methods.get('byol')(tiny_config('byol')).param_groups() == {}


def test_per_view_batchnorm_normalises_each_view_by_its_own_statistics():
  """SimSiam's last projector layer is BatchNorm without affine: run per view (its authors' code),
  each view's projections have zero mean and unit variance over the batch; as one batch (SimCLR's
  way) only both views together do."""
  from simclr_jax import models
  from simclr_jax.methods.base import apply_views
  method = _method('simsiam', projection_dims=(32, 16), predictor_dims=(8, 16))
  assert method.PER_VIEW_BATCHNORM and not methods.get('simclr').PER_VIEW_BATCHNORM
  model = method.make_model(models.make_encoder('resnet10', 0.125, 'float32', 'cifar'))
  rng = _rng(10)
  views = {'global': np.stack([rng.normal(size=(16, 32, 32, 3)), 2 + 3 * rng.normal(size=(16, 32, 32, 3))]
                              ).astype(np.float32)}  # [2 views, 16 images, ...]: the second view shifted
  variables = models.init_variables(model, 0, (32, 32, 3))
  for per_view in (True, False):
    out, stats = jax.jit(lambda v, x, p=per_view: apply_views(model, v, x, p))(variables, views)
    z = np.asarray(out['global']['projection'], np.float64)  # [2, 16, D]
    halves = [np.abs(z[k].mean(0)).max() for k in (0, 1)]
    if per_view:
      assert max(halves) < 1e-4 and abs(z[0].var(0).mean() - 1) < 1e-2, halves
    else:
      assert np.abs(z.reshape(32, -1).mean(0)).max() < 1e-4 and min(halves) > 1e-2, halves
    assert jax.tree.structure(stats) == jax.tree.structure(variables['batch_stats'])


def test_collapse_statistics_match_rankme_and_the_deviation_of_normalised_embeddings():
  rng = _rng(8)
  for z in (rng.normal(size=(96, 32)), rng.normal(size=(20, 64)), np.outer(rng.normal(size=50), rng.normal(size=16))):
    std, rank = pretrain.collapse_statistics(jnp.asarray(z, jnp.float32))
    assert abs(float(std) - oracles.embedding_std(z)) < 1e-5
    assert abs(float(rank) - oracles.rankme(z)) < 2e-3 * oracles.rankme(z)


def test_distillation_loss_matches_simclr_v2():
  rng = _rng(9)
  s, t = rng.normal(size=(16, 10)), 3 * rng.normal(size=(16, 10))
  for temperature in (1.0, 2.0):
    got = float(distillation_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), temperature))
    assert abs(got - oracles.distillation(s, t, temperature)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize('name', METHODS)
def test_each_method_matches_on_four_devices_in_chunks_and_resumes_bit_identically(name, tmp_path):
  """tests/method_check.py on 4 simulated CPU devices, on the family's smallest encoder: two steps
  on 1 device with the whole batch agree with two on 4 devices with the batch in 2 chunks (the
  gradient cache) within float32 reduction order (the EMA target, queues and the statistics over
  the global batch included), and a run stopped mid-epoch then resumed ends bit-identical to a
  straight one (SimCLR, and each method with a hook's implementation of its own)."""
  env = device_env(4)
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'method_check.py'), os.path.join(ROOT, 'tests'),
                         str(tmp_path), name], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  method = name.partition('@')[0]
  assert r['devices'] == 4 and r['method'] == method
  # Both steps' losses agree to float32 rounding.
  for a, b in zip(r['loss_1'], r['loss_4']):
    assert abs(a - b) < 1e-5 * max(1.0, abs(a)), r
  # The parameters, statistics and method state after each step agree within 1% of the change step
  # 1 made and 10% after step 2: the partial sums of a gradient round differently where terms cancel,
  # as for the BatchNorm biases, and LARS and momentum carry that into step 2 (the figures measured
  # are in docs/reliability.md). The method state is compared part by part (EMA target, queue,
  # centre, its integer pointers equal), within 0.1%. Statistics or negatives taken per device or
  # per chunk, a queue filled in another order, a chunk's rows put back in the wrong places or a
  # gradient not averaged over the devices change step 1's loss and its update by orders of
  # magnitude more.
  for k, bound in ((0, 1e-2), (1, 1e-1)):
    assert all(x <= bound for x in r['four'][k]), r
    assert r['four'][k][2] <= 1e-3, r
  assert r['moved'] > 1e-4  # the steps really changed the parameters
  assert r['probe'] == (method == 'simclr')  # the online probe (compared above) in SimCLR's check only
  if method in ('mocov3', 'byol', 'mocov2plus', 'nnclr', 'dino', 'swav'):
    assert r['method_state_leaves'] > 0  # EMA targets, queues and DINO's centre in the state, compared above
  # Stopped and resumed: SimCLR, and each method that brings a hook's implementation of its own
  # (method_check.resumes_its_own); the others resume through a path already checked.
  assert r['resumed'] == (name not in ('barlow_twins', 'vicreg', 'dcl', 'byol', 'dino@vit')), r
  if not r['resumed']:
    return
  assert r['stopped'] and r['stopped_at'] == 2 and r['steps'] == [4, 4]
  assert r['saved'] == ['batch_stats', 'method_state', 'params'] and r['identical'] and r['leaves'] > 4
  assert r['final_loss'][0] == r['final_loss'][1]
  assert r['embedding'][0] > 0 and r['embedding'][1] > 1


@pytest.mark.slow
@pytest.mark.parametrize('name', ['byol', 'dino'])
def test_the_gradient_cache_matches_a_chunk_by_chunk_reference_with_batchnorm(name):
  """tests/chunk_check.py's ghost_differences: with BatchNorm, on distinct images, the chunked
  objective (2 chunks) equals a reference that runs each chunk by hand -- BYOL's views each through
  BatchNorm with an EMA target, DINO's both in one call with its teacher on the global crops -- and
  differs from the whole batch's (BatchNorm over 8 rather than 16 images)."""
  r = chunk_check.ghost_differences(small_config(name))
  assert max(r['value'], r['stats']) <= 1e-4 and r['state'] <= 3e-4 and r['grads'] <= 3e-3, r
  assert r['whole_grads'] > 1e-2, r  # the chunks were taken
  assert r['target_stats'], r


class _MultiCropCheck(Method):
  """A multi-crop method written the way a new method is (module-level class, its views and its
  loss, nothing else): two 32 px views and two 16 px ones, each small crop's projection pulled
  towards the mean of the large ones' (stop-gradient), DINO's layout at toy scale."""
  NAME = 'multicrop_check'
  PER_VIEW_BATCHNORM = False
  seen = {}

  def views(self, first, second):
    small = first._replace(crop_scale=(0.05, 0.4))
    return (Crops('global', 0, (first, second)), Crops('local', 16, (small, small)))

  def loss(self, model, out, state, views, step, params=None):
    _MultiCropCheck.seen.update({k: v.shape for k, v in views.items()},
                                **{f'{k}_projection': o['projection'].shape for k, o in out.items()})
    target = jax.lax.stop_gradient(jnp.mean(out['global']['projection'], axis=0))
    local = out['local']['projection']
    return -jnp.mean(jnp.sum(l2_normalize(local) * l2_normalize(target)[None], axis=-1)), state, {}


def test_a_multi_crop_method_trains_on_mixed_sizes_in_one_step(monkeypatch):
  """A method declaring 2 x 32 px + 2 x 16 px crops gets both groups made on the device from one
  batch, each through the model in one call, and its step trains: the house's multi-crop path."""
  from conftest import pretrain_task
  monkeypatch.setattr(methods, 'get', lambda name: _MultiCropCheck)
  config = tiny_config('pretrain', **{**MECHANICS, 'train_limit': 128, 'evals.knn.every_epochs': -1,
                                      'projection_dims': (32, 16)})
  task, settings = pretrain_task(config)
  step = task.inputs.bind(task.step_fn)
  before = jax.tree.map(np.asarray, task.state.params)
  state = task.state
  for _, args in task.inputs.batches(0, 2):
    state, metrics = step(state, *args)
  b = config.batch_size
  assert _MultiCropCheck.seen == {'global': (2, b, 32, 32, 3), 'local': (2, b, 16, 16, 3),
                                  'global_projection': (2, b, 16), 'local_projection': (2, b, 16)}
  assert np.isfinite(float(metrics['loss'])) and -1.0 <= float(metrics['loss']) <= 1.0
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(b) - a).max()), before, state.params)
  assert max(jax.tree.leaves(moved['encoder'])) > 0  # the encoder trained on both groups' losses
