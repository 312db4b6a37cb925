import pytest

from centerexp.config import Config, all_keys, load_config
from centerexp.errors import ConfigError

from .conftest import CONFIGS


@pytest.mark.parametrize("name", ["v1_0", "v1_1", "v1_2", "baseline"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.train.epochs == 30 and cfg.train.batch_size == 256


def test_v1_configs_differ_only_where_the_seed_says():
    v10, v11, v12 = (load_config(CONFIGS / f"v1_{i}.yaml").to_dict() for i in range(3))
    assert v10["loss"]["distance"] == "squared" and v11["loss"]["distance"] == "sqrt"
    assert {**v10, "loss": {**v10["loss"], "distance": "sqrt"}} == v11
    assert {**v11, "model": {**v11["model"], "arch": "shallow"}} == v12
    assert v10["loss"]["center_lr"] == 0.5 and v10["train"]["lr"] == 0.001 and v10["loss"]["lamda"] == 1.0


def test_baseline_is_the_overview_setup():
    cfg = load_config(CONFIGS / "baseline.yaml")
    assert (cfg.model.arch, cfg.train.optimizer, cfg.loss.center_update) == ("linear", "adam", "ema")
    assert (cfg.loss.alpha, cfg.loss.lamda, cfg.loss.count_normalized) == (0.5, 0.1, False)


def test_required_keys_exist():
    for key in [
        "train.epochs",
        "train.batch_size",
        "train.seed",
        "train.device",
        "data.train_subset",
        "data.test_subset",
        "model.arch",
        "loss.distance",
        "loss.lamda",
        "loss.center_update",
        "loss.center_lr",
        "loss.alpha",
    ]:
        assert key in all_keys()


def test_overrides_are_parsed_as_yaml_scalars_and_typed():
    cfg = load_config(
        CONFIGS / "v1_0.yaml",
        [
            "train.epochs=2",
            "data.train_subset=null",
            "loss.lamda=1e-3",
            "train.deterministic=true",
            "loss.distance=sqrt",
        ],
    )
    assert cfg.train.epochs == 2 and cfg.data.train_subset is None
    assert cfg.loss.lamda == pytest.approx(1e-3) and isinstance(cfg.loss.lamda, float)
    assert cfg.train.deterministic is True and cfg.loss.distance == "sqrt"


def test_empty_file_gives_defaults(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml") == Config()


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
        ("epochs", "expected KEY=VALUE"),
        ("train.epochs=two", "--set train.epochs: expected an integer, got 'two'"),
        ("train.epochs=2.5", "expected an integer, got 2.5"),
        ("train.deterministic=1", "expected true/false, got 1"),
        ("train.epochs=0", "train.epochs must be >= 1, got 0"),
        ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
        ("train.lr=0", "train.lr must be > 0, got 0.0"),
        ("train.lr=-0.1", "train.lr must be > 0"),
        ("data.train_subset=1", "data.train_subset must be >= 2 (BatchNorm trains on 2+ samples) or null, got 1"),
        ("train.lr=.inf", "train.lr must be a finite number, got inf"),
        ("data.test_subset=-5", "data.test_subset must be >= 1 or null"),
        ("loss.alpha=1.5", "loss.alpha must be in [0, 1], got 1.5"),
        ("model.arch=resnet", "model.arch must be one of deep, shallow, linear, got 'resnet'"),
        ("loss.distance=cosine", "loss.distance must be one of squared, sqrt"),
        ("loss.center_update=adam", "loss.center_update must be one of sgd, ema"),
        ("train.device=tpu", "train.device must be one of auto, cpu, cuda"),
    ],
)
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "v1_0.yaml", [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)
    assert e.value.exit_code == 2


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("train:\n  epochs: 3\n  lr: [0.1\n", r"bad.yaml:.*line \d+.*YAML syntax error"),
        ("train:\n  epohcs: 3\n", r"bad.yaml: unknown key 'train.epohcs' \(did you mean 'train.epochs'\?\)"),
        ("trian:\n  epochs: 3\n", r"unknown key 'trian' \(did you mean 'train'\?\)"),
        ("loss:\n  lamda: fast\n", r"bad.yaml: loss.lamda: expected a number, got 'fast'"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_bad_file_contents_name_the_file(tmp_path, text, pattern):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=pattern):
        load_config(bad)


def test_overrides_on_an_empty_file_or_null_section(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml", ["train.epochs=2"]).train.epochs == 2
    (tmp_path / "null.yaml").write_text("train:\n")
    assert load_config(tmp_path / "null.yaml", ["train.seed=4"]).train.seed == 4


def test_section_that_is_not_a_mapping(tmp_path):
    (tmp_path / "bad.yaml").write_text("train: 5\n")
    for overrides in ([], ["train.epochs=2"]):
        with pytest.raises(ConfigError, match="bad.yaml: section 'train' must be a mapping, got 5"):
            load_config(tmp_path / "bad.yaml", overrides)


def test_batch_of_one_is_refused_for_conv_nets():
    with pytest.raises(ConfigError, match="train.batch_size must be >= 2 for model.arch deep"):
        load_config(CONFIGS / "v1_0.yaml", ["train.batch_size=1"])
    assert load_config(CONFIGS / "baseline.yaml", ["train.batch_size=1"]).train.batch_size == 1


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
