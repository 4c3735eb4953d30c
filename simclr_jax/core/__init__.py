"""The ground floor every other subpackage stands on: errors the CLI reports as one line, signals,
the run's log lines, the device mesh and the periodic-action test. Imports nothing of the package.

    from simclr_jax.core import interrupts, parallel
    from simclr_jax.core.errors import ConfigError
"""
