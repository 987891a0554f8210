"""Signed models, updates and controls: key ids, the device's keyring, and a device that acts
only on controls its trainer signed."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime.profile import bundled_profile
from edge_runtime.runtime import EdgeRuntime
from shared_schema.envelope import decode, encode, sha256_hex
from shared_schema.messages import AckReason, Control, Model, Update
from shared_schema.signing import Keyring, Signer, key_id, save_keypair

SHA = "a" * 64
UNKEYED = {"public_key": None, "next_public_key": None}


def _keys(tmp_path, *names):
    return [save_keypair(tmp_path / f"{n}.pem", tmp_path / f"{n}.pub") for n in names]


def test_a_key_id_names_one_key(tmp_path):
    current, following = _keys(tmp_path, "current", "next")
    assert key_id(current.public_key()) == Signer(current).key_id
    assert key_id(current.public_key()) != key_id(following.public_key())
    assert len(Signer(current).key_id) == 16


def test_the_keyring_takes_either_of_its_keys_and_nothing_else(tmp_path):
    current, following, stranger = _keys(tmp_path, "current", "next", "stranger")
    ring = Keyring.load([tmp_path / "current.pub", tmp_path / "next.pub"])
    update = Update(base_version=1, base_sha256=SHA, new_version=2, result_sha256=SHA)
    body = b"body"
    for key in (current, following):  # a rotation: the next key is already trusted
        assert ring.verify("cam-1", Signer(key).sign("cam-1", update, body), sha256_hex(body))
    assert not ring.verify("cam-1", Signer(stranger).sign("cam-1", update, body), sha256_hex(body))
    signed = Signer(current).sign("cam-1", update, body)
    assert not ring.verify("cam-2", signed, sha256_hex(body))  # meant for another device
    assert not ring.verify("cam-1", signed, sha256_hex(b"other"))  # another body
    assert not ring.verify("cam-1", signed.model_copy(update={"new_version": 3}), sha256_hex(body))
    renamed = signed.model_copy(update={"key_id": Signer(following).key_id})
    assert not ring.verify("cam-1", renamed, sha256_hex(body))  # the key id is signed too
    assert not ring.verify("cam-1", update, sha256_hex(body))  # unsigned


def test_a_signature_covers_the_message_type(tmp_path):
    (key,) = _keys(tmp_path, "k")
    ring = Keyring([key.public_key()])
    model = Signer(key).sign("cam-1", Model(version=4))
    as_control = Control(sampling_rate_fps=1.0, t_update_s=10.0).model_copy(
        update={"key_id": model.key_id, "signature": model.signature}
    )
    assert ring.verify("cam-1", model, sha256_hex(b""))
    assert not ring.verify("cam-1", as_control, sha256_hex(b""))


@pytest.fixture
def keyed_runtime(tmp_path, shared_dir):
    (key,) = _keys(tmp_path, "trainer")
    profile = bundled_profile(
        "cpu", tmp_path, device_id="cam-1", model={"public_key": str(tmp_path / "trainer.pub")}
    )
    runtime = EdgeRuntime.from_profile(profile, connect=False)
    acks = []
    runtime._send = acks.append  # what the device would publish
    yield runtime, key, acks
    runtime.shutdown(drain_s=0)


def _control(msg: Control) -> object:
    return decode(encode(msg, device_id="trainer", seq=1, boot="0" * 16))


def test_a_keyed_device_acts_only_on_controls_its_trainer_signed(keyed_runtime, tmp_path):
    runtime, key, acks = keyed_runtime
    before = runtime.sampler.rate_fps
    forged = Control(sampling_rate_fps=0.1, t_update_s=10.0)
    runtime._on_control(_control(forged), None)
    stranger = _keys(tmp_path, "stranger")[0]
    runtime._on_control(_control(Signer(stranger).sign("cam-1", forged)), None)
    assert runtime.sampler.rate_fps == before
    assert [a.reason for a in acks] == [AckReason.BAD_SIGNATURE] * 2
    assert runtime.counters.get("control.rejected.bad_signature") == 2
    runtime._on_control(_control(Signer(key).sign("cam-1", forged)), None)
    assert runtime.sampler.rate_fps == pytest.approx(0.1) and acks[-1].ok


def test_unsigned_is_a_development_switch_that_must_be_named(tmp_path):
    from edge_runtime.profile import ProfileError

    with pytest.raises(ProfileError, match=r"model: .*public_key is required.*allow_unsigned"):
        bundled_profile("cpu", tmp_path, device_id="cam-1", model=UNKEYED)
    dev = bundled_profile(
        "cpu", tmp_path, device_id="cam-1", model=UNKEYED | {"allow_unsigned": True}
    )
    assert dev.model.trusted_keys == ()


def test_the_trainer_signs_unless_told_otherwise(tmp_path, trainer_keys):
    from cloud_trainer.config import ConfigError, load_config
    from tests.trainer_helpers import trainer_raw, write_toml

    raw = trainer_raw(tmp_path)
    assert raw["updates"]["signing_key"] == str(trainer_keys / "trainer_ed25519.pem")
    del raw["updates"]["signing_key"]
    with pytest.raises(ConfigError, match=r"updates: signing_key is required: cloud-trainer keys"):
        load_config(write_toml(raw, tmp_path / "unsigned.toml"))
    raw["updates"]["allow_unsigned"] = True
    assert load_config(write_toml(raw, tmp_path / "dev.toml")).updates.signing_key is None


def test_a_missing_key_file_is_one_line_naming_the_fix(tmp_path):
    from shared_schema.config_files import ConfigFileError
    from shared_schema.signing import load_private_key

    with pytest.raises(ConfigFileError, match=r"absent\.pem: cannot read.*keys generate --dir"):
        load_private_key(tmp_path / "absent.pem")
    with pytest.raises(ConfigFileError, match=r"absent\.pub: cannot read"):
        Keyring.load([tmp_path / "absent.pub"])


def test_a_signature_expires():
    key = Ed25519PrivateKey.generate()
    ring = Keyring([key.public_key()])
    signed = Signer(key, lifetime_s=60.0).sign("cam-1", Model(version=4))
    assert signed.expires_at == pytest.approx(time.time() + 60.0, abs=5)
    assert ring.refusal("cam-1", signed, sha256_hex(b"")) is None
    later = signed.expires_at + 1
    assert ring.refusal("cam-1", signed, sha256_hex(b""), now=later) == AckReason.EXPIRED
    extended = signed.model_copy(update={"expires_at": later + 3600})  # the expiry is signed
    assert ring.refusal("cam-1", extended, sha256_hex(b""), now=later) == AckReason.BAD_SIGNATURE
    timeless = signed.model_copy(update={"expires_at": None})
    assert ring.refusal("cam-1", timeless, sha256_hex(b"")) == AckReason.BAD_SIGNATURE
