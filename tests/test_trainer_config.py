"""The trainer's config takes the student's geometry from its model file; older files that
state it still load, where they agree with the file."""

from __future__ import annotations

import pytest

from cloud_trainer.config import ConfigError, load_config
from tests.trainer_helpers import trainer_raw, write_toml


def test_classes_and_sample_size_come_from_the_student_file(shared_dir, tmp_path):
    config = load_config(write_toml(trainer_raw(tmp_path), tmp_path / "trainer.toml"))
    assert config.student.num_classes == 21
    assert config.training.frame_size == (513, 513)  # the dm05 student's input


def test_an_older_config_stating_the_geometry_still_loads(shared_dir, tmp_path):
    raw = trainer_raw(tmp_path, frame_size=[385, 385])
    raw["student"]["num_classes"] = 21
    config = load_config(write_toml(raw, tmp_path / "trainer.toml"))
    assert config.student.num_classes == 21
    assert config.training.frame_size == (385, 385)  # stated: kept


def test_a_class_count_the_file_contradicts_is_refused(shared_dir, tmp_path):
    raw = trainer_raw(tmp_path)
    raw["student"]["num_classes"] = 19
    path = write_toml(raw, tmp_path / "trainer.toml")
    with pytest.raises(ConfigError, match=r"student\.num_classes: .*19, but .* scores 21"):
        load_config(path)


def test_an_unreadable_student_model_names_it(tmp_path):
    raw = trainer_raw(tmp_path)
    raw["student"]["model"] = str(tmp_path / "missing.tflite")
    with pytest.raises(ConfigError, match=r"cannot read .*missing\.tflite"):
        load_config(write_toml(raw, tmp_path / "trainer.toml"))


def test_the_student_precision_is_int8_or_float16(shared_dir, tmp_path):
    assert (
        load_config(write_toml(trainer_raw(tmp_path), tmp_path / "a.toml")).student.precision
        == "int8"
    )
    raw = trainer_raw(tmp_path)
    raw["student"]["precision"] = "float16"
    assert load_config(write_toml(raw, tmp_path / "b.toml")).student.precision == "float16"
    raw["student"]["precision"] = "float32"
    with pytest.raises(ConfigError, match=r"student\.precision: .*'int8' or 'float16'"):
        load_config(write_toml(raw, tmp_path / "c.toml"))


def test_the_trainer_config_takes_environment_variables_for_secrets_and_hosts(
    shared_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("AMS_TEST_BROKER", "mqtt.internal")
    monkeypatch.setenv("AMS_TEST_SECRET", "s3cret")
    raw = trainer_raw(tmp_path)
    raw["mqtt"] |= {"host": "${AMS_TEST_BROKER}", "username": "trainer",
                    "password": "${AMS_TEST_SECRET}"}  # fmt: skip
    raw["trainer_id"] = "${AMS_TEST_TRAINER_ID:-trainer-eu}"
    config = load_config(str(write_toml(raw, tmp_path / "trainer.toml")))
    assert config.mqtt.host == "mqtt.internal" and config.trainer_id == "trainer-eu"
    assert config.mqtt.read_password() == "s3cret"
