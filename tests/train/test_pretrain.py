"""The pretraining config a base model records, and how a cached base is compared with it."""

import json

from conftest import config_preset

from r1jax.train import pretrain


def test_config_differences(tmp_path):
    cd = config_preset("pretrain_base", "smoke")
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
