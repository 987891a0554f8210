"""``cloud-trainer keys``: a current and a next key, rotated so no device is stranded."""

from __future__ import annotations

import json

import pytest

from cloud_trainer.cli import main
from cloud_trainer.fleet import keys
from shared_schema.envelope import sha256_hex
from shared_schema.messages import Model
from shared_schema.signing import Keyring, Signer, load_private_key


def test_generate_makes_two_pairs_and_never_overwrites(tmp_path, capsys):
    assert main(["keys", "generate", "--dir", str(tmp_path / "k")]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["current"]["key_id"] != made["next"]["key_id"]
    private = tmp_path / "k" / "trainer_ed25519.pem"
    assert private.stat().st_mode & 0o777 == 0o600
    assert made["trainer.toml"] == {"updates": {"signing_key": str(private)}}
    assert main(["keys", "generate", "--dir", str(tmp_path / "k")]) == 2
    assert "never overwritten" in capsys.readouterr().err


def test_a_rotation_keeps_every_device_verifying(tmp_path):
    before = keys.generate(tmp_path)
    profile = before["device profile"]["model"]
    device = Keyring.load([profile["public_key"], profile["next_public_key"]])  # as flashed
    after = keys.rotate(tmp_path)
    assert after["current"]["key_id"] == before["next"]["key_id"]
    assert after["retired"] == before["current"]["key_id"]
    assert (tmp_path / "retired" / f"{after['retired']}.pem").is_file()
    signer = Signer(load_private_key(tmp_path / "trainer_ed25519.pem"))
    model = signer.sign("cam-1", Model(version=9), b"file")
    assert device.verify("cam-1", model, sha256_hex(b"file"))  # not re-flashed yet: still fine


def test_show_names_a_key_by_its_id(tmp_path, capsys):
    made = keys.generate(tmp_path)
    for path in (made["current"]["private"], made["current"]["public"]):
        assert keys.show(path) == {"path": str(path), "key_id": made["current"]["key_id"]}
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(keys.KeyDirError, match=r"junk\.pem: not an Ed25519 key"):
        keys.show(tmp_path / "junk.pem")
    assert main(["keys", "rotate", "--dir", str(tmp_path / "none")]) == 2
    assert "keys generate --dir" in capsys.readouterr().err
