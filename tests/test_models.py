import jax
import jax.numpy as jnp
import pytest

from simclr_jax import models


def _init(module, shape=(2, 32, 32, 3)):
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False))


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def test_full_width_resnet18_encoder_has_11_17m_parameters():
  variables = _init(models.SimCLRModel(models.make_encoder('resnet18')))
  assert _count(variables['params']['encoder']) == 11_168_832
  proj = variables['params']['projector']
  assert [proj[k]['kernel'].shape for k in sorted(proj)] == [(512, 2048), (2048, 128)]


@pytest.mark.parametrize('name,features', [('resnet18', 32), ('resnet34', 32), ('resnet50', 128)])
def test_encoders_output_named_float32_features(name, features):
  model = models.SimCLRModel(models.make_encoder(name, width=0.0625), projection_dims=(16, 8))
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)), train=False)
  out = model.apply(variables, jnp.ones((3, 32, 32, 3)), train=False)
  assert out['features'].shape == (3, features) and out['features'].dtype == jnp.float32
  assert out['projection'].shape == (3, 8)


def test_bfloat16_computes_in_bf16_but_keeps_float32_params_stats_and_outputs():
  model = models.SimCLRModel(models.make_encoder('resnet18', 0.125, 'bfloat16'), projection_dims=(32, 16))
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)), train=False)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  out, updated = model.apply(variables, jnp.ones((4, 32, 32, 3)), train=True, mutable=['batch_stats'])
  assert out['projection'].dtype == jnp.float32
  assert {x.dtype for x in jax.tree.leaves(updated)} == {jnp.dtype('float32')}
  hlo = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, jnp.ones((4, 32, 32, 3))).as_text()
  assert 'bf16' in hlo


def test_width_multiplier_narrows_every_stage():
  narrow = _count(_init(models.make_encoder('resnet18', 0.25))['params'])
  full = _count(_init(models.make_encoder('resnet18', 1.0))['params'])
  assert 0.05 * full < narrow < 0.08 * full  # about width squared


def test_frozen_classifier_sends_no_gradient_into_the_encoder():
  model = models.Classifier(models.make_encoder('resnet18', 0.125), num_classes=10, frozen_encoder=True)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)), train=False)

  def loss(params):
    out, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                         jnp.ones((4, 32, 32, 3)), train=True, mutable=['batch_stats'])
    return out['logits'].sum()

  grads = jax.grad(loss)(variables['params'])
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads['encoder']))
  assert float(jnp.abs(grads['head']['kernel']).max()) > 0


def test_auto_dtype_is_bfloat16_on_accelerators_and_float32_on_the_cpu():
  assert models.resolve_dtype('auto', 'cpu') == 'float32'
  assert models.resolve_dtype('auto', 'gpu') == 'bfloat16' and models.resolve_dtype('auto', 'tpu') == 'bfloat16'
  assert models.resolve_dtype('float32', 'gpu') == 'float32'
  here = jnp.float32 if jax.default_backend() == 'cpu' else jnp.bfloat16  # CPU, GPU or TPU alike
  assert models.make_encoder('resnet18', 0.125, 'auto').dtype == here
