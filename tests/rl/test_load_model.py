"""rl.trainer._load_model: a scan_layers override runs a checkpoint saved unrolled."""

import numpy as np
from flax import traverse_util

from r1jax.models import scan_layout
from r1jax.rl import config as rl_config
from r1jax.rl import trainer


def test_scan_layers_override_stacks_the_saved_layers(base_dir):
    plain = rl_config.ExperimentConfig(base_dir=str(base_dir), total_steps=1)
    config, params, _ = trainer._load_model(plain)
    scanned_run = rl_config.ExperimentConfig(base_dir=str(base_dir), total_steps=1,
                                             model_overrides=(("scan_layers", True),))
    scanned_config, scanned, _ = trainer._load_model(scanned_run)
    assert scanned_config.scan_layers and not config.scan_layers
    assert scan_layout.is_scanned(scanned) and not scan_layout.is_scanned(params)
    flat = traverse_util.flatten_dict(scan_layout.to_scanned(config, params))
    for path, leaf in traverse_util.flatten_dict(scanned).items():
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat[path]))
