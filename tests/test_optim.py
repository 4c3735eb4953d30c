import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from simclr_jax import optim


def test_learning_rate_scaling():
  assert optim.peak_learning_rate(0.3, 512, 'linear') == pytest.approx(0.6)
  assert optim.peak_learning_rate(0.3, 1024, 'sqrt') == pytest.approx(0.6)
  assert optim.peak_learning_rate(0.3, 1024, 'none') == pytest.approx(0.3)


def test_warmup_then_cosine_to_zero():
  config = tiny_config(epochs=10, warmup_epochs=2.0, batch_size=512, learning_rate=0.3, lr_scaling='linear')
  schedule = optim.make_schedule(config, steps_per_epoch=100)
  assert float(schedule(0)) == 0.0
  assert float(schedule(100)) == pytest.approx(0.3, rel=1e-5)   # half-way through warmup
  assert float(schedule(200)) == pytest.approx(0.6, rel=1e-5)   # peak
  assert float(schedule(600)) == pytest.approx(0.3, rel=1e-3)   # cosine half-way
  assert float(schedule(1000)) == pytest.approx(0.0, abs=1e-7)
  values = [float(schedule(s)) for s in range(200, 1001, 50)]
  assert all(a >= b for a, b in zip(values, values[1:]))


def test_no_warmup_starts_at_the_peak():
  config = tiny_config(epochs=4, warmup_epochs=0.0, batch_size=256, learning_rate=0.1)
  assert float(optim.make_schedule(config, 10)(0)) == pytest.approx(0.1)


def _params():
  return {'conv': {'kernel': jnp.ones((3, 3, 4, 8))}, 'norm': {'scale': jnp.ones((8,)), 'bias': jnp.ones((8,))},
          'dense': {'kernel': jnp.ones((8, 2)), 'bias': jnp.ones((2,))}}


def test_decay_mask_excludes_biases_and_norm_parameters():
  mask = optim.decay_mask(_params())
  assert mask == {'conv': {'kernel': True}, 'norm': {'scale': False, 'bias': False},
                  'dense': {'kernel': True, 'bias': False}}


@pytest.mark.parametrize('name', ['sgd', 'lars', 'adamw'])
def test_weight_decay_touches_only_kernels(name):
  config = tiny_config(optimizer=name, weight_decay=0.1, learning_rate=0.1, lr_scaling='none')
  tx = optim.make_optimizer(config, optax.constant_schedule(0.1))
  params = _params()
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  assert float(jnp.abs(updates['conv']['kernel']).max()) > 0
  for leaf in (updates['norm']['scale'], updates['norm']['bias'], updates['dense']['bias']):
    assert float(jnp.abs(leaf).max()) == 0


def test_lars_does_not_adapt_biases():
  config = tiny_config(optimizer='lars', weight_decay=0.0, learning_rate=0.1, lr_scaling='none', momentum=0.0)
  tx = optim.make_optimizer(config, optax.constant_schedule(0.1))
  params = _params()
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['dense']['bias'], -0.05, rtol=1e-6)  # plain SGD step
  assert not np.allclose(updates['dense']['kernel'], -0.05)              # trust ratio applied
