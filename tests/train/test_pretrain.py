"""The pretraining config a base model records, and how a cached base is compared with it."""

import importlib.util
import json
import pathlib

from r1jax.train import pretrain

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _config(preset):
    spec = importlib.util.spec_from_file_location("pretrain_base", ROOT / "configs/pretrain_base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def test_config_differences(tmp_path):
    cd = _config("smoke")
    cfg = pretrain.PretrainConfig.from_config_dict(cd)
    assert pretrain.config_differences(cfg, tmp_path) is None  # no info.json: nothing recorded
    (tmp_path / "info.json").write_text(json.dumps({"corpus": {}}))
    assert pretrain.config_differences(cfg, tmp_path) is None  # a base from elsewhere
    recorded = pretrain._flat(cfg)
    assert recorded["sft.packing"] == "best_fit" and recorded["model.hidden_size"] == 64
    (tmp_path / "info.json").write_text(json.dumps({"pretrain_config": recorded}))
    assert pretrain.config_differences(cfg, tmp_path) == []
    cd.num_documents = 123
    cd.sft.packing = "next_fit"
    changed = pretrain.PretrainConfig.from_config_dict(cd)
    assert pretrain.config_differences(changed, tmp_path) == [
        "num_documents: 300 -> 123", "sft.packing: 'best_fit' -> 'next_fit'"]
