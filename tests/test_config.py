import pytest

from purrgan.config import (DEFAULT_PRESET, from_dict, load_config, parse_toml, preset_names, preset_summary, set_value,
                            to_toml)
from purrgan.errors import PurrganError
from purrgan.state import check_config


def test_default_preset_is_the_reference_dcgan_recipe():
    config = load_config()
    assert config.model.arch == "dcgan" and config.loss.name == "bce"
    assert config.optim.lr_g == 2e-4 and (config.optim.beta1, config.optim.beta2) == (0.5, 0.999)
    assert config.train.batch_size == 128 and config.model.z_dim == 100
    assert config.data.source == "digits" and config.data.resolution == 32


def test_every_preset_loads_and_has_a_summary():
    assert DEFAULT_PRESET in preset_names()
    for name in preset_names():
        load_config(name)
        assert preset_summary(name)


def test_overrides_are_parsed_to_the_field_type():
    config = load_config(overrides={"train.steps": "7", "optim.lr_d": "1e-3", "train.epoch_checkpoints": "true"})
    assert config.train.steps == 7 and config.optim.lr_d == 1e-3 and config.train.epoch_checkpoints is True


@pytest.mark.parametrize("key, value, message", [
    ("train.stepz", "5", "unknown key 'train.stepz'; valid keys in [train]: steps, epochs"),
    ("trian.steps", "5", "section among: data, model, loss, optim, augment, train"),
    ("train.steps", "five", "'train.steps' must be int, got 'five'"),
    ("train.batch_size", "-3", "'train.batch_size' must be positive"),
    ("data.channels", "2", "'data.channels' is 2; allowed values: 1, 3"),
    ("data.hflip", "maybe", "allowed values: auto, on, off"),
    ("model.arch", "stylegan9", "unknown model.arch 'stylegan9'; choose one of: "),
    ("loss.name", "nope", "unknown loss.name 'nope'; choose one of: "),
    ("data.resolution", "48", "does not support resolution 48"),
    ("train.device", "tpu", "allowed values: auto, cpu, cuda, cuda:N"),
])
def test_bad_values_fail_with_one_line_naming_the_key(key, value, message):
    with pytest.raises(PurrganError) as error:
        check_config(load_config(overrides={key: value}))  # registry names are checked by the registries
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_preset_lists_valid_names():
    with pytest.raises(PurrganError, match=f"unknown preset 'nope'; choose one of: .*{DEFAULT_PRESET}"):
        load_config("nope")


def test_toml_round_trip_and_syntax_error_line(tmp_path):
    # set_value, not load_config: a source that does not exist here would be refused when the config is completed
    config = set_value(load_config(overrides={"train.steps": "11"}), "data.source", 'C:\\my "cats"')
    assert from_dict(parse_toml(to_toml(config), "x")) == config
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nsteps = 5\nbatch_size = = 3\n")
    with pytest.raises(PurrganError, match=r"bad.toml is not valid TOML: .*line 3"):
        load_config(config_file=bad)


def test_wrong_types_in_a_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nsteps = "many"\n')
    with pytest.raises(PurrganError, match="'train.steps' must be int"):
        load_config(config_file=path)
    path.write_text('[training]\nsteps = 3\n')
    with pytest.raises(PurrganError, match="unknown config section 'training'"):
        load_config(config_file=path)
