"""Training config: defaults, YAML files, ``--set`` overrides of nested keys, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from memsv_cli.errors import MemsvError
from memsv_cli.train.config import DEFAULTS, apply_override, diff_keys, resolve_config, save_config
from memsv_cli.train.settings import Settings


def test_defaults_are_the_wespeaker_voxceleb_recipe() -> None:
    cfg = resolve_config()
    assert cfg["data"]["chunk_frames"] == 200
    assert cfg["head"]["scale"] == 32.0
    assert cfg["margin_scheduler"]["final_margin"] == 0.2
    assert cfg["optimizer"] == {
        "name": "sgd",
        "args": {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
    }
    assert (cfg["scheduler"]["initial_lr"], cfg["scheduler"]["final_lr"]) == (0.1, 5e-5)
    assert cfg["scheduler"]["warm_up_epochs"] == 6
    assert (cfg["train"]["epochs"], cfg["train"]["batch_size"], cfg["train"]["num_avg"]) == (150, 128, 10)


def test_set_overrides_nested_keys_with_yaml_typed_values() -> None:
    cfg = resolve_config(
        None,
        ["train.epochs=3", "optimizer.args.weight_decay=1e-3", "train.grad_clip=5", "data.spec_aug=true"],
    )
    assert cfg["train"]["epochs"] == 3 and isinstance(cfg["train"]["epochs"], int)
    assert cfg["optimizer"]["args"]["weight_decay"] == 1e-3
    assert cfg["optimizer"]["args"]["momentum"] == 0.9  # siblings kept
    assert cfg["train"]["grad_clip"] == 5
    assert cfg["data"]["spec_aug"] is True
    assert DEFAULTS["train"]["epochs"] == 150  # defaults never mutated


def test_set_adds_free_form_model_args() -> None:
    cfg = resolve_config(None, ["model.args.base_width=8", "model.args.reversible_backward=false"])
    assert cfg["model"]["args"] == {
        "feat_dim": 80,
        "embed_dim": 256,
        "base_width": 8,
        "reversible_backward": False,
    }


def test_unknown_keys_are_errors_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(MemsvError, match="'train.epoch'"):
        resolve_config(None, ["train.epoch=3"])
    with pytest.raises(MemsvError, match="'scheduler.warmup'"):
        resolve_config(None, ["scheduler.warmup.epochs=3"])
    conf = tmp_path / "c.yaml"
    conf.write_text("train:\n  batchsize: 4\n")
    with pytest.raises(MemsvError, match=r"c.yaml: unknown config key 'train.batchsize'"):
        resolve_config(conf)


def test_bad_values_are_errors_naming_the_key() -> None:
    with pytest.raises(MemsvError, match="'train.precision'"):
        resolve_config(None, ["train.precision=fp8"])
    with pytest.raises(MemsvError, match="'train.batch_size'"):
        resolve_config(None, ["train.batch_size=0"])
    with pytest.raises(MemsvError, match="must be a mapping"):
        apply_override(resolve_config(), "train=3")
    with pytest.raises(MemsvError, match="key.sub=value"):
        resolve_config(None, ["train.epochs"])


def test_yaml_file_then_overrides_in_order(tmp_path: Path) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text("model:\n  name: rev_resnet34\n  args: {base_width: 16}\ntrain:\n  epochs: 5\n")
    cfg = resolve_config(conf, ["train.epochs=7", "train.epochs=9"])
    assert cfg["model"] == {
        "name": "rev_resnet34",
        "args": {"feat_dim": 80, "embed_dim": 256, "base_width": 16},
    }
    assert cfg["train"]["epochs"] == 9


def test_switching_optimizer_drops_arguments_the_new_one_does_not_take() -> None:
    cfg = resolve_config(None, ["optimizer.name=adam8bit"])
    assert cfg["optimizer"] == {"name": "adam8bit", "args": {"weight_decay": 1e-4}}
    cfg = resolve_config(None, ["optimizer.name=sgd", "optimizer.args.dampening=0.1"])
    assert cfg["optimizer"]["args"]["momentum"] == 0.9  # same name: nothing dropped
    # same family: `--optimizer sgd8bit` on the SGD recipe keeps momentum 0.9 and Nesterov
    cfg = resolve_config(None, ["optimizer.name=sgd8bit"])
    assert cfg["optimizer"] == {
        "name": "sgd8bit",
        "args": {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
    }
    # ... and back to 32 bits drops only what 32-bit optimizers refuse
    cfg = resolve_config(
        None, ["optimizer.name=sgd8bit", "optimizer.args.block_size=128", "optimizer.name=sgd"]
    )
    assert cfg["optimizer"] == {
        "name": "sgd",
        "args": {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
    }


def test_saved_config_round_trips_and_diff_names_changed_keys(tmp_path: Path) -> None:
    cfg = resolve_config(None, ["train.epochs=2"])
    save_config(cfg, tmp_path / "config.yaml")
    loaded = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert loaded == cfg
    assert set(loaded["model"]) == {"name", "args"}
    assert resolve_config(None, [], base=loaded) == cfg
    assert diff_keys(cfg, resolve_config(None, ["train.epochs=3", "optimizer.args.momentum=0.5"])) == [
        "optimizer.args.momentum",
        "train.epochs",
    ]


RECIPE_CONF = Path(__file__).resolve().parents[1] / "recipes" / "voxceleb" / "conf"


@pytest.mark.parametrize(
    "name", ["resnet34", "rev_resnet34_sgd8bit", "fullrev_resnet34_adam8bit", "mini_fast"]
)
def test_recipe_configs_build_their_model_and_optimizer(name: str) -> None:
    from memsv_cli.train.settings import Settings
    from memsv_cli.train.state import build_model_checked, build_optimizer_for

    cfg = resolve_config(RECIPE_CONF / f"{name}.yaml")
    model = build_model_checked(cfg)
    optimizer = build_optimizer_for(Settings.from_config(cfg), model.parameters())
    assert type(optimizer).__name__.lower() == cfg["optimizer"]["name"]
    if name != "mini_fast":  # the full-size configs keep ResNet34's 6.63M parameters
        assert sum(p.numel() for p in model.parameters()) == pytest.approx(6.63e6, rel=0.01)


def test_every_recipe_config_resolves() -> None:
    confs = sorted(RECIPE_CONF.glob("*.yaml"))
    assert len(confs) >= 4
    for conf in confs:
        resolve_config(conf)  # raises naming the file and key on an unknown key
        Settings.from_config(resolve_config(conf))  # the typed sections match the schema
