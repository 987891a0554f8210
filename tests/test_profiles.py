import typing
from pathlib import Path

import pytest
import tomllib

from edge_runtime.backends import (
    Backend,
    EdgeTpuConfig,
    GpuConfig,
    InferenceConfig,
    LiteRtConfig,
    NnapiConfig,
    OnnxRuntimeConfig,
)
from edge_runtime.profile import ProfileError, load_profile, parse_profile
from firmware_configs import BUNDLED_PROFILES, PROFILE_DIR


@pytest.mark.parametrize("name", BUNDLED_PROFILES)
def test_every_bundled_profile_is_valid(name, shared_dir):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.device.device_class == name
    assert profile.model.initial.is_absolute()
    assert profile.buffer.spool_dir.is_absolute()
    assert profile.sampling.min_fps <= profile.sampling.initial_fps <= profile.sampling.max_fps


def test_profiles_cover_every_backend():
    backends = {load_profile(n).inference.backend for n in BUNDLED_PROFILES}
    assert backends == set(Backend) - {Backend.NNAPI}  # the android profile names it, commented


def test_every_backend_has_a_config_class():
    union, _ = typing.get_args(InferenceConfig)
    tags = {
        typing.get_args(c.model_fields["backend"].annotation)[0] for c in typing.get_args(union)
    }
    assert tags == set(Backend)


def test_each_profile_gets_its_backends_typed_config():
    expected = {
        "cpu": LiteRtConfig,
        "coral-devboard": EdgeTpuConfig,
        "rpi-coral-usb": EdgeTpuConfig,
        "jetson-orin": OnnxRuntimeConfig,
        "android": GpuConfig,
    }
    configs = {name: load_profile(name).inference for name in BUNDLED_PROFILES}
    assert {name: type(config) for name, config in configs.items()} == expected
    # A TFLite model holds its input size; only the ONNX profile names one, for free sizes.
    sizes = {name: config.input_size for name, config in configs.items()}
    assert sizes == {name: (513, 513) if name == "jetson-orin" else None for name in configs}
    assert (configs["coral-devboard"].device, configs["rpi-coral-usb"].device) == ("pci:0", "usb")
    assert configs["jetson-orin"].providers[0] == "TensorrtExecutionProvider"
    assert configs["android"].library == "libtensorflowlite_gpu_delegate.so"


def test_cpu_profile_points_at_the_real_student(shared_dir):
    profile = load_profile("cpu")
    assert (
        profile.model.initial == shared_dir / "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite"
    )
    assert profile.model.initial.is_file()


def _raw(name: str = "cpu") -> dict:
    return tomllib.loads((PROFILE_DIR / f"{name}.toml").read_text())


def _edgetpu_on_cpu_profile(raw: dict) -> None:
    raw["inference"]["backend"] = "edgetpu"
    del raw["inference"]["xnnpack"]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r["mqtt"].__setitem__("port", 70000), "mqtt.port"),
        (lambda r: r["mqtt"].__setitem__("protocol", "4"), "mqtt.protocol"),
        (lambda r: r["mqtt"].__setitem__("prefix", "a/+/b"), "mqtt.prefix"),
        (lambda r: r["mqtt"].__setitem__("hots", "x"), "mqtt.hots"),
        (lambda r: r["inference"].__setitem__("backend", "tpu9000"), "inference.backend"),
        (lambda r: r["inference"].pop("backend"), "inference.backend"),
        (lambda r: r["inference"].__setitem__("threads", 0), "inference.threads"),
        (lambda r: r["inference"].__setitem__("input_size", [513]), "inference.input_size"),
        (lambda r: r["inference"].__setitem__("input_std", 0), "inference.input_std"),
        # settings of another back-end
        (lambda r: r["inference"].__setitem__("device", "usb"), "inference.device"),
        (lambda r: r["inference"].__setitem__("providers", ["X"]), "inference.providers"),
        (lambda r: r["sampling"].__setitem__("max_fps", -1), "sampling.max_fps"),
        (lambda r: r["sampling"].__setitem__("min_fps", 1.5), "sampling"),
        (lambda r: r["buffer"].__setitem__("bitrate_kbps", "fast"), "buffer.bitrate_kbps"),
        (lambda r: r["buffer"].pop("spool_dir"), "buffer.spool_dir"),
        (lambda r: r["device"].__setitem__("id", "cam/1"), "device"),
        (lambda r: r["model"].__setitem__("format", "onnx"), "model.format"),
        (lambda r: r["inference"].__setitem__("backend", "edgetpu"), "inference.xnnpack"),
        (_edgetpu_on_cpu_profile, "model.format 'edgetpu-tflite'"),
        (
            lambda r: r["model"].__setitem__("initial", "${AMS_NO_SUCH_VAR}/m.tflite"),
            "model.initial",
        ),
    ],
)
def test_bad_profile_error_names_the_field(mutate, field):
    raw = _raw()
    mutate(raw)
    with pytest.raises(ProfileError) as err:
        parse_profile(raw, base_dir=PROFILE_DIR, source="cpu.toml")
    message = str(err.value)
    assert message.startswith("cpu.toml: ")
    assert field in message, message


@pytest.mark.parametrize(
    ("name", "mutate", "message"),
    [
        (
            "jetson-orin",
            lambda r: r["inference"].__setitem__("providers", []),
            "inference.providers",
        ),
        (
            "jetson-orin",
            lambda r: r["inference"].__setitem__("xnnpack", False),
            "inference.xnnpack",
        ),
        (
            "jetson-orin",
            lambda r: r["inference"]["provider_options"].__setitem__("CUDAExecutionProvider", 1),
            "inference.provider_options.CUDAExecutionProvider",
        ),
        (
            "jetson-orin",
            lambda r: r["inference"].__setitem__("providers", ["CPUExecutionProvider"]),
            "inference: Value error, provider_options names providers not in providers",
        ),
        ("jetson-orin", lambda r: r["model"].__setitem__("format", "tflite"), "model.format"),
        (
            "rpi-coral-usb",
            lambda r: r["inference"].__setitem__("device", "usb0"),
            "inference.device",
        ),
        ("rpi-coral-usb", lambda r: r["inference"].__setitem__("library", ""), "inference.library"),
        (
            "android",
            lambda r: r["inference"].__setitem__("options", {"x": 1}),
            "inference.options.x",
        ),
    ],
)
def test_backend_settings_are_checked(name, mutate, message, tmp_path):
    raw = _raw(name)
    mutate(raw)
    with pytest.raises(ProfileError) as err:
        parse_profile(raw, base_dir=tmp_path, source=f"{name}.toml")
    assert str(err.value).startswith(f"{name}.toml: ")
    assert message in str(err.value), str(err.value)


def test_backend_settings_have_defaults(tmp_path):
    raw = _raw("jetson-orin")
    for key in ("providers", "provider_options", "threads"):
        del raw["inference"][key]
    inference = parse_profile(raw, base_dir=tmp_path).inference
    assert (inference.providers, inference.threads) == (("CPUExecutionProvider",), 2)
    assert (inference.input_mean, inference.input_std) == (128.0, 128.0)


def test_relative_paths_resolve_against_the_profile(tmp_path):
    raw = _raw()
    raw["model"]["initial"] = "models/student.tflite"
    profile = parse_profile(raw, base_dir=tmp_path)
    assert profile.model.initial == tmp_path / "models/student.tflite"


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(bad)


def test_password_file_and_tls_are_typed(tmp_path: Path):
    raw = _raw("coral-devboard")
    profile = parse_profile(raw, base_dir=tmp_path)
    assert profile.mqtt.tls is not None and profile.mqtt.tls.cert_file is not None
    raw["mqtt"]["tls"].pop("key_file")
    with pytest.raises(ProfileError, match=r"mqtt\.tls"):
        parse_profile(raw, base_dir=tmp_path)


def test_a_bundled_profile_for_this_machine_keeps_its_state_in_the_workdir(tmp_path):
    from edge_runtime.profile import bundled_profile

    profile = bundled_profile(
        "cpu", tmp_path, device_id="cam-7", buffer={"t_update_s": 2.0}, mqtt={"port": 1999}
    )
    assert profile.device.id == "cam-7" and profile.mqtt.port == 1999
    assert profile.model.slot_dir == tmp_path / "slots"
    assert profile.buffer.spool_dir == tmp_path / "spool" and profile.buffer.t_update_s == 2.0
    with pytest.raises(ProfileError, match=r"buffer\.t_update_s"):
        bundled_profile("cpu", tmp_path, device_id="cam-7", buffer={"t_update_s": -1})


def test_the_benchs_paths_are_the_callers(tmp_path, monkeypatch):
    """``edge-runtime bench --model ../shared/...`` means the model beside the caller, not
    beside the bundled profile's file."""
    from edge_runtime.bench import bench_profile

    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    settings = {"threads": 1, "sampling_fps": 1.0, "bitrate_kbps": 200.0, "broker": None}
    profile = bench_profile(Path("../student.tflite"), tmp_path, public_key=Path("bench.pub"),
                            **settings)  # fmt: skip
    assert profile.model.initial == tmp_path / "student.tflite"
    assert profile.model.public_key == tmp_path / "here" / "bench.pub"


def test_every_string_of_a_profile_takes_environment_variables(monkeypatch):
    monkeypatch.setenv("AMS_TEST_HOST", "broker.lan")
    monkeypatch.setenv("AMS_TEST_PORT", "8884")
    monkeypatch.setenv("AMS_TEST_ID", "cam-42")
    monkeypatch.delenv("AMS_TEST_UNSET", raising=False)
    raw = _raw()
    raw["device"]["id"] = "${AMS_TEST_ID}"
    raw["mqtt"] |= {
        "host": "${AMS_TEST_HOST}",
        "port": "${AMS_TEST_PORT}",
        "username": "${AMS_TEST_UNSET:-cam-default}",
        "prefix": "site/${AMS_TEST_ID}",
    }
    raw["source"] = {"uri": "rtsp://${AMS_TEST_HOST}:${AMS_TEST_UNSET:-554}/cam"}
    raw["mqtt"]["password"] = "pa$${AMS_TEST_ID}$$"  # $${...}: the text itself
    profile = parse_profile(raw, base_dir=PROFILE_DIR, source="cpu.toml")
    assert profile.device.id == "cam-42"
    assert (profile.mqtt.host, profile.mqtt.port) == ("broker.lan", 8884)
    assert (profile.mqtt.username, profile.mqtt.prefix) == ("cam-default", "site/cam-42")
    assert profile.source.uri == "rtsp://broker.lan:554/cam"
    assert profile.mqtt.read_password() == "pa${AMS_TEST_ID}$$"
    raw["mqtt"]["host"] = "${AMS_TEST_UNSET}"
    with pytest.raises(
        ProfileError,
        match=r"mqtt\.host: environment variable \$\{AMS_TEST_UNSET"
        r"\} is not set: set it, or write \$\{AMS_TEST_UNSET:-default\}",
    ):
        parse_profile(raw, base_dir=PROFILE_DIR, source="cpu.toml")


def test_the_android_profile_takes_nnapi_as_its_comments_say():
    """NNAPI is deprecated from Android 15: the profile runs the GPU delegate and names NNAPI,
    for older phones, in its comments; those lines must be a valid profile."""
    text = (PROFILE_DIR / "android.toml").read_text()
    lines = [line.removeprefix("#   ") for line in text.splitlines() if line.startswith("#   ")]
    raw = _raw("android")
    raw["inference"] = {"threads": 4, **tomllib.loads("\n".join(lines))}
    inference = parse_profile(raw, base_dir=PROFILE_DIR, source="android.toml").inference
    assert isinstance(inference, NnapiConfig)
    assert inference.options == {"execution_preference": "sustained_speed"}
