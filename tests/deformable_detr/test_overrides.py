import pytest

from deformable_detr.config.build import load_config
from deformable_detr.config.overrides import ConfigOverrideError, apply_overrides

from ..train_net_runs import CONFIG


@pytest.fixture
def cfg():
    return load_config(str(CONFIG))


def test_existing_keys_and_call_arguments_are_set(cfg):
    apply_overrides(
        cfg,
        [
            "train.max_iter=5",
            "train.seed=3",
            "model.transformer.hidden_dim=64",
            "optimizer.weight_decay=0.5",  # an argument of AdamW the config leaves at its default
            "dataloader.train.mapper.augmentation.0.prob=0.25",
        ],
    )
    assert (cfg.train.max_iter, cfg.train.seed, cfg.model.transformer.hidden_dim) == (5, 3, 64)
    assert cfg.optimizer.weight_decay == 0.5
    assert cfg.dataloader.train.mapper.augmentation[0].prob == 0.25


@pytest.mark.parametrize(
    "override, closest",
    [
        ("train.max_iters=5", "train.max_iter"),
        ("model.transformer.hiden_dim=3", "model.transformer.hidden_dim"),
        ("train.amp.dtyp=bfloat16", "train.amp.dtype"),
    ],
)
def test_a_mistyped_key_names_the_closest_one(cfg, override, closest):
    with pytest.raises(ConfigOverrideError) as info:
        apply_overrides(cfg, [override])
    key = override.split("=")[0]
    assert str(info.value) == (
        f"{override}: the config has no key {key} (did you mean {closest}?); "
        f"write +{override} to add it"
    )
    assert "\n" not in str(info.value)


def test_plus_adds_a_key_and_refuses_an_existing_one(cfg):
    apply_overrides(cfg, ["+train.note=hello", "++train.max_iter=7", "++train.other=1"])
    assert (cfg.train.note, cfg.train.max_iter, cfg.train.other) == ("hello", 7, 1)
    with pytest.raises(ConfigOverrideError, match="already has train.max_iter; write train.max"):
        apply_overrides(cfg, ["+train.max_iter=5"])


def test_yacs_overrides_are_pairs_or_key_equals_value_and_checked():
    from deformable_detr import load_yacs_config

    config = str(CONFIG.with_suffix(".yaml"))
    cfg = load_yacs_config(
        config, ["MODEL.WEIGHTS=a=b.pth", "INPUT.MIN_SIZE_TEST", 64, "MODEL.DEVICE", "cpu"]
    )
    assert (cfg.MODEL.WEIGHTS, cfg.INPUT.MIN_SIZE_TEST, cfg.MODEL.DEVICE) == ("a=b.pth", 64, "cpu")
    with pytest.raises(ConfigOverrideError) as info:
        load_yacs_config(config, ["MODEL.DEVICE", "cpu", "MODEL.WIEGHTS", "m.pth"])
    assert str(info.value) == (
        "MODEL.WIEGHTS: the config has no key MODEL.WIEGHTS (did you mean MODEL.WEIGHTS?)"
    )
    with pytest.raises(ConfigOverrideError, match="MODEL.WEIGHTS: no value; write KEY VALUE"):
        load_yacs_config(config, ["MODEL.WEIGHTS"])
