import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from simclr_jax.train import optim


def test_learning_rate_scaling():
  assert optim.peak_learning_rate(0.3, 512, 'linear') == pytest.approx(0.6)
  assert optim.peak_learning_rate(0.3, 1024, 'sqrt') == pytest.approx(0.6)
  assert optim.peak_learning_rate(0.3, 1024, 'none') == pytest.approx(0.3)


def test_warmup_then_cosine_to_zero():
  schedule = optim.make_schedule(optim.peak_learning_rate(0.3, 512, 'linear'), total_steps=1000,
                                 warmup_epochs=2.0, steps_per_epoch=100)
  assert float(schedule(0)) == 0.0
  assert float(schedule(100)) == pytest.approx(0.3, rel=1e-5)   # half-way through warmup
  assert float(schedule(200)) == pytest.approx(0.6, rel=1e-5)   # peak
  assert float(schedule(600)) == pytest.approx(0.3, rel=1e-3)   # cosine half-way
  assert float(schedule(1000)) == pytest.approx(0.0, abs=1e-7)
  values = [float(schedule(s)) for s in range(200, 1001, 50)]
  assert all(a >= b for a, b in zip(values, values[1:]))


def test_no_warmup_starts_at_the_peak():
  assert float(optim.make_schedule(0.1, 40, 0.0, 10)(0)) == pytest.approx(0.1)


def test_a_warmup_longer_than_a_quarter_of_the_run_is_shortened_with_a_notice(capsys):
  schedule = optim.make_schedule(0.1, total_steps=20, warmup_epochs=10.0, steps_per_epoch=10)
  assert 'warmup_epochs=10 shortened to 0.5' in capsys.readouterr().out
  assert float(schedule(0)) == 0.0 and float(schedule(5)) == pytest.approx(0.1)  # peak after 5 steps
  optim.make_schedule(0.1, total_steps=2000, warmup_epochs=10.0, steps_per_epoch=10)
  assert 'shortened' not in capsys.readouterr().out


def _params():
  return {'conv': {'kernel': jnp.ones((3, 3, 4, 8))}, 'norm': {'scale': jnp.ones((8,)), 'bias': jnp.ones((8,))},
          'dense': {'kernel': jnp.ones((8, 2)), 'bias': jnp.ones((2,))}}


def test_decay_mask_excludes_biases_and_norm_parameters():
  mask = optim.decay_mask(_params())
  assert mask == {'conv': {'kernel': True}, 'norm': {'scale': False, 'bias': False},
                  'dense': {'kernel': True, 'bias': False}}


@pytest.mark.parametrize('name', ['sgd', 'lars', 'adamw'])
def test_weight_decay_touches_only_kernels(name):
  tx = optim.make_optimizer(name, optax.constant_schedule(0.1), momentum=0.9, weight_decay=0.1)
  params = _params()
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  assert float(jnp.abs(updates['conv']['kernel']).max()) > 0
  for leaf in (updates['norm']['scale'], updates['norm']['bias'], updates['dense']['bias']):
    assert float(jnp.abs(leaf).max()) == 0


@pytest.mark.parametrize('name', ['sgd', 'lars', 'adamw'])
def test_a_weight_decay_schedule_decays_each_step_by_its_cosine_value(name):
  """weight_decay_end: the decay moves from weight_decay to weight_decay_end on a half cosine over
  the run (DINO's cosine_scheduler): with zero gradients an SGD or AdamW step is -lr wd(k) p, and
  LARS's step at step k equals a constant-decay LARS step at wd(k)."""
  lr, total = 0.1, 10
  decay = optim.cosine_between(0.04, 0.4, total)
  wd = lambda k: 0.4 + (0.04 - 0.4) * (1 + np.cos(np.pi * min(k, total) / total)) / 2
  params = _params()
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3) if name == 'lars' else jnp.zeros_like(p), params)
  tx = optim.make_optimizer(name, optax.constant_schedule(lr), 0.0, decay)
  state = tx.init(params)
  for k in range(12):
    updates, state = tx.update(grads, state, params)
    if name == 'lars':
      fixed = optim.make_optimizer(name, optax.constant_schedule(lr), 0.0, float(wd(k)))
      want = fixed.update(grads, fixed.init(params), params)[0]['conv']['kernel']
    else:
      want = -lr * wd(k) * params['conv']['kernel']
    np.testing.assert_allclose(updates['conv']['kernel'], want, rtol=2e-5, err_msg=f'step {k}')
    assert float(jnp.abs(updates['norm']['scale']).max()) == (0.0 if name != 'lars' else pytest.approx(0.03))
  assert float(decay(0)) == pytest.approx(0.04) and float(decay(total)) == pytest.approx(0.4)


def test_weight_decay_end_reaches_the_stage_optimiser_and_a_negative_one_is_refused():
  from conftest import tiny_config
  from simclr_jax.core.errors import ConfigError
  from simclr_jax.stages import runner
  from simclr_jax.validate import validate_config
  config = tiny_config('pretrain', weight_decay=0.04, weight_decay_end=0.4, optimizer='sgd', momentum=0.0)
  tx = runner.optimizer(config, 10, 5).make(0.1)
  params = _params()
  state = tx.init(params)
  for k in range(11):
    updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  np.testing.assert_allclose(updates['conv']['kernel'], -0.1 * 0.4 * params['conv']['kernel'], rtol=1e-5)  # at its end
  assert tiny_config('pretrain').weight_decay_end is None  # unset: the constant weight_decay
  with pytest.raises(ConfigError, match='config.weight_decay_end=-1.0 is invalid: use 0 or more'):
    validate_config(tiny_config('pretrain', weight_decay_end=-1.0))


def test_lars_does_not_adapt_biases():
  tx = optim.make_optimizer('lars', optax.constant_schedule(0.1), momentum=0.0, weight_decay=0.0)
  params = _params()
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['dense']['bias'], -0.05, rtol=1e-6)  # plain SGD step
  assert not np.allclose(updates['dense']['kernel'], -0.05)              # trust ratio applied


def test_partition_freezes_one_group_and_trains_the_other():
  params = {'encoder': _params(), 'head': {'kernel': jnp.ones((8, 2)), 'bias': jnp.ones((2,))}}
  tx = optim.partition({'model': optim.make_optimizer('sgd', optax.constant_schedule(0.1), 0.9, 0.1),
                        'frozen': optax.set_to_zero()}, {'encoder': 'frozen', 'head': 'model'})
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates['encoder']))
  assert all(float(jnp.abs(u).max()) > 0 for u in jax.tree.leaves(updates['head']))


@pytest.mark.parametrize('warmup,total', [(0, 40), (10, 100), (3, 7)])
def test_the_schedule_matches_optax_warmup_cosine(warmup, total):
  ours = optim.Schedule(0.6, warmup, total)
  theirs = (optax.warmup_cosine_decay_schedule(0.0, 0.6, warmup, total, end_value=0.0) if warmup
            else optax.cosine_decay_schedule(0.6, total))
  for step in range(total + 3):
    assert abs(float(ours(step)) - float(theirs(step))) < 1e-6, step


def _updates(tx, steps=4):
  params = _params()
  grads = [jax.tree.map(lambda p, k=k: jnp.sin(p * (k + 1.0) + jnp.arange(p.size).reshape(p.shape)), params)
           for k in range(steps)]
  state, out = tx.init(params), []
  for g in grads:
    u, state = jax.jit(tx.update)(g, state, params)
    params = optax.apply_updates(params, u)
    out.append(params)
  return out


@pytest.mark.parametrize('name,lars', [('sgd', optim.Lars()), ('lars', optim.Lars()),
                                       ('lars', optim.Lars(0.02, 'sum_of_norms', True, False)), ('adamw', optim.Lars())])
def test_the_schedule_held_as_data_trains_as_the_schedule_compiled_in(name, lars):
  schedule = optim.Schedule(0.5, 2, 6)
  held = optim.scheduled(lambda lr, peak: optim.make_optimizer(name, lr, 0.9, 0.01, lars), schedule)
  compiled_in = optim.make_optimizer(name, optax.warmup_cosine_decay_schedule(0.0, 0.5, 2, 6, end_value=0.0), 0.9,
                                     0.01, lars)
  for a, b in zip(_updates(held), _updates(compiled_in)):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_runs_differing_in_length_or_learning_rate_compile_the_same_update_and_a_resume_follows_the_config():
  params, grads = _params(), jax.tree.map(jnp.ones_like, _params())
  make = lambda schedule: optim.scheduled(lambda lr, peak: optim.make_optimizer('lars', lr, 0.9, 1e-6), schedule)
  short, long = make(optim.Schedule(0.1, 0, 8)), make(optim.Schedule(0.3, 5, 100))
  text = lambda tx: jax.jit(tx.update).lower(grads, tx.init(params), params).as_text()
  assert text(short) == text(long)
  assert text(short) != text(optim.make_optimizer('lars', optim.Schedule(0.1, 0, 8), 0.9, 1e-6))
  restored = short.update(grads, short.init(params), params)[1]  # a checkpoint of the short run
  resumed = optim.with_schedule_of(restored, long.init(params))
  assert {k: float(v) for k, v in resumed.hyperparams.items()} == pytest.approx(
      {'peak': 0.3, 'warmup_steps': 5, 'total_steps': 100})
  assert int(resumed.count) == 1 and jax.tree.structure(resumed) == jax.tree.structure(restored)


# The LARS forms the recipes run: google-research/simclr's (SimCLR v2), solo-learn's CIFAR recipes
# (clip_lr: True; MoCo v3, BYOL, Barlow Twins, VICReg), solo-learn's without the clip, and the clip
# on the google form.
LARS_FORMS = [optim.Lars(0.02, 'update_norm', False, True), optim.Lars(0.02, 'sum_of_norms', True, False),
              optim.Lars(0.02, 'sum_of_norms', False, False), optim.Lars(0.02, 'update_norm', True, True)]


@pytest.mark.parametrize('lars', LARS_FORMS, ids=lambda l: f'{l.trust_ratio}-clip{l.clip}-inside{l.lr_in_momentum}')
@pytest.mark.parametrize('schedule', [optim.Schedule(0.3, 4, 10), optim.Schedule(0.3, 0, 3)], ids=['warmup', 'cosine'])
def test_each_lars_form_matches_the_float64_reference_over_three_steps(lars, schedule):
  """Three steps of make_optimizer('lars') against tests/lars_oracle.py (float64, written from
  google-research/simclr's and solo-learn's update rules): a kernel, a kernel of zeros (whose ratio
  is 1) and a bias (no decay, no ratio), with the learning rate of each step from the schedule
  (warmup: 0, 0.075, 0.15, where the clip caps the ratio; cosine: 0.3, 0.225, 0.075)."""
  from lars_oracle import lars_reference
  rng = np.random.default_rng(3)
  params = {'kernel': rng.normal(size=(3, 3, 4, 8)), 'zeros': np.zeros((4, 8)), 'bias': rng.normal(size=(8,))}
  grads = [{k: 0.1 * rng.normal(size=v.shape) for k, v in params.items()} for _ in range(3)]
  tx = optim.scheduled(lambda lr, peak: optim.make_optimizer('lars', lr, 0.9, 1e-4, lars), schedule)
  ours = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
  state = tx.init(ours)
  want = lars_reference(params, grads, [float(schedule(k)) for k in range(3)], 0.9, 1e-4, lars.eta,
                        lars.trust_ratio, lars.clip, lars.lr_in_momentum)
  for k in range(3):
    u, state = jax.jit(tx.update)({n: jnp.asarray(g, jnp.float32) for n, g in grads[k].items()}, state, ours)
    ours = optax.apply_updates(ours, u)
    for name in params:
      # float32 round-off: of the values themselves, and of the steps relative to how far they moved
      bound = 1e-6 * np.abs(params[name]).max() + 1e-5 * np.abs(want[k][name] - params[name]).max()
      assert np.abs(np.asarray(ours[name], np.float64) - want[k][name]).max() <= bound, (k, name)
  ratio = 0.02 * np.linalg.norm(params['kernel']) / np.linalg.norm(grads[0]['kernel'])
  assert 0.075 < ratio < 0.3  # so that the clip caps the warmup's steps and not the cosine's first


def test_each_lars_recipe_runs_its_sources_form():
  from conftest import config_file
  from simclr_jax.config_base import load_config_file
  form = lambda name: (lambda c: (c.optimizer, c.lars_trust_ratio, c.lars_clip, c.lars_lr_in_momentum))(
      load_config_file(config_file(name)))
  for name in ('mocov3', 'byol', 'barlow_twins', 'vicreg'):  # solo-learn's CIFAR recipes: clip_lr True
    assert form(name) == ('lars', 'sum_of_norms', True, False), name
  assert form('pretrain_v2') == ('lars', 'update_norm', False, True)  # google-research/simclr's tf2


def test_weight_decay_spares_biases_norms_position_embeddings_and_tokens():
  """decay_mask: kernels decay; biases, norm scales and a ViT's position embeddings, class and
  mask tokens do not, whatever their number of dimensions."""
  params = {'encoder': {'patch_embed': {'kernel': jnp.ones((4, 4, 3, 8)), 'bias': jnp.ones(8)},
                        'pos_embed': jnp.ones((1, 65, 8)), 'cls_token': jnp.ones((1, 1, 8)),
                        'blocks_0': {'norm1': {'scale': jnp.ones(8)}, 'attn': {'qkv': {'kernel': jnp.ones((8, 24))}}}},
            'decoder': {'mask_token': jnp.ones((1, 1, 8)), 'decoder_pos_embed': jnp.ones((1, 65, 8))}}
  mask = optim.decay_mask(params)
  assert mask['encoder']['patch_embed'] == {'kernel': True, 'bias': False}
  assert mask['encoder']['blocks_0'] == {'norm1': {'scale': False}, 'attn': {'qkv': {'kernel': True}}}
  assert not any([mask['encoder']['pos_embed'], mask['encoder']['cls_token'], *mask['decoder'].values()])


def test_layer_decay_scales_each_vit_layer_by_its_depth():
  """layer_decay(d) on a 2-block ViT classifier: the head and final norm at 1, block 1 at d, block 0
  at d^2, the embeddings at d^3; SGD's update of a weight is lr x gradient x its factor."""
  ones = lambda *shape: jnp.ones(shape)
  params = {'encoder': {'patch_embed': {'kernel': ones(2, 2, 3, 4)}, 'pos_embed': ones(1, 5, 4),
                        'cls_token': ones(1, 1, 4), 'blocks_0': {'fc1': {'kernel': ones(4, 4)}},
                        'blocks_1': {'fc1': {'kernel': ones(4, 4)}}, 'norm': {'scale': ones(4)}},
            'head': {'kernel': ones(4, 10)}}
  tx = optax.chain(optax.sgd(0.1), optim.layer_decay(0.5))
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  factor = jax.tree.map(lambda u: float(-u.reshape(-1)[0]) / 0.1, updates)
  assert factor['head']['kernel'] == pytest.approx(1.0) and factor['encoder']['norm']['scale'] == pytest.approx(1.0)
  assert factor['encoder']['blocks_1']['fc1']['kernel'] == pytest.approx(0.5)
  assert factor['encoder']['blocks_0']['fc1']['kernel'] == pytest.approx(0.25)
  for name in ('patch_embed', 'pos_embed', 'cls_token'):
    assert jax.tree.leaves(factor['encoder'][name])[0] == pytest.approx(0.125)
  # Inside a partition (linear_eval's frozen encoder, pretraining's probe apart), it sees its group
  # only; a decoder's blocks (MAE's) are not the encoder's layers.
  params['decoder'] = {'blocks_5': {'fc1': {'kernel': ones(4, 4)}}}
  tx = optim.partition({'model': optax.chain(optax.sgd(0.1), optim.layer_decay(0.5)), 'frozen': optax.set_to_zero()},
                       {'encoder': 'model', 'head': 'frozen', 'decoder': 'model'})
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  factor = jax.tree.map(lambda u: float(-u.reshape(-1)[0]) / 0.1, updates)
  assert factor['head']['kernel'] == 0.0 and factor['decoder']['blocks_5']['fc1']['kernel'] == pytest.approx(1.0)
  assert factor['encoder']['blocks_0']['fc1']['kernel'] == pytest.approx(0.25)
