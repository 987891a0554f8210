"""The three update formats on the real student: bit-exact round trips and hostile bodies."""

from __future__ import annotations

import contextlib
import gzip
import hashlib

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from shared_schema.messages import Model, Update, UpdateFormat
from shared_schema.signing import (
    load_private_key,
    load_public_key,
    save_keypair,
    sign,
    signing_payload,
    verify,
)
from shared_schema.tflite_file import TFLiteFile, TFLiteFormatError
from shared_schema.update_formats import (
    ResultHashMismatch,
    UpdateFormatError,
    ams_fp16,
    apply_update,
    qdelta,
    verify_and_apply,
    zpatch,
)

STUDENT = "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite"


@pytest.fixture(scope="module")
def base(shared_dir) -> bytes:
    return (shared_dir / STUDENT).read_bytes()


def _perturbed(model: TFLiteFile, fraction: float, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    new = {}
    for tensor in model.trainable:
        values = model.values(tensor).copy()
        picked = rng.random(tensor.size) < fraction
        info = np.iinfo(tensor.dtype)
        moved = values[picked].astype(np.int64) + rng.choice([-2, -1, 1, 2], picked.sum())
        values[picked] = np.clip(moved, info.min, info.max).astype(tensor.dtype)
        new[tensor.index] = values
    return new


def test_file_reader_finds_every_weight_and_bias(base):
    model = TFLiteFile(base)
    assert len(model.trainable) == 110
    assert model.trainable_size == 688_357
    assert model.patched({}) == base
    assert {t.dtype.name for t in model.trainable} == {"uint8", "int32"}


def test_qdelta_chain_is_bit_exact(base):
    current = base
    for seed in range(3):  # each update applies to the previous result
        model = TFLiteFile(current)
        target = model.patched(_perturbed(model, 0.02, seed))
        body = qdelta.encode(model, _perturbed(model, 0.02, seed))
        current = apply_update(UpdateFormat.QDELTA, current, body)
        assert hashlib.sha256(current).digest() == hashlib.sha256(target).digest()
    assert current != base


def test_qdelta_of_no_change_is_tiny_and_a_no_op(base):
    model = TFLiteFile(base)
    body = qdelta.encode(model, {t.index: model.values(t) for t in model.trainable})
    assert len(body) < 32
    assert apply_update(UpdateFormat.QDELTA, base, body) == base


def test_qdelta_wraps_differences_at_the_dtype_edges(base):
    model = TFLiteFile(base)
    tensor = next(t for t in model.trainable if t.dtype == np.uint8)
    values = model.values(tensor).copy()
    values[:2] = [0, 255]
    out = apply_update(UpdateFormat.QDELTA, base, qdelta.encode(model, {tensor.index: values}))
    assert np.array_equal(TFLiteFile(out).values(tensor), values)


def test_ams_fp16_round_trip_quantizes_at_the_frozen_scales(base):
    model = TFLiteFile(base)
    new = _perturbed(model, 0.05, 7)
    selected = {}
    for tensor in model.trainable:
        positions = np.flatnonzero(new[tensor.index] != model.values(tensor))
        channel = tensor._channel_of(positions)
        real = (new[tensor.index][positions].astype(np.int64) - tensor.zero_point[channel]) * (
            tensor.scale[channel].astype(np.float64)
        )
        selected[tensor.index] = (positions, real)
    body = ams_fp16.encode(model, selected)
    out = TFLiteFile(apply_update(UpdateFormat.AMS_FP16, base, body))
    weights = [t for t in model.trainable if t.dtype == np.uint8]
    # uint8 weights survive float16 exactly; int32 biases may lose their last steps
    assert all(np.array_equal(out.values(t), new[t.index]) for t in weights)
    changed = sum(p.size for p, _ in selected.values())
    assert len(body) > 2 * changed  # two bytes per selected value, plus the mask


def test_zpatch_round_trip_and_wrong_base(base):
    model = TFLiteFile(base)
    target = model.patched(_perturbed(model, 0.01, 3))
    body = zpatch.encode(base, target)
    assert len(body) < len(target) // 10
    assert apply_update(UpdateFormat.ZPATCH, base, body) == target
    other_base = TFLiteFile(target).patched(_perturbed(TFLiteFile(target), 0.3, 4))
    try:
        wrong = apply_update(UpdateFormat.ZPATCH, other_base, body)
    except UpdateFormatError:
        return
    assert wrong != target  # a wrong base never silently gives the right file


@pytest.mark.parametrize("fmt", list(UpdateFormat))
def test_truncated_and_garbage_bodies_raise_update_format_error(base, fmt):
    model = TFLiteFile(base)
    new = _perturbed(model, 0.01, 5)
    body = {
        UpdateFormat.QDELTA: lambda: qdelta.encode(model, new),
        UpdateFormat.ZPATCH: lambda: zpatch.encode(base, model.patched(new)),
        UpdateFormat.AMS_FP16: lambda: ams_fp16.encode(
            model, {t.index: (np.arange(3), np.zeros(3)) for t in model.trainable}
        ),
    }[fmt]()
    for cut in (0, 3, len(body) // 2, len(body) - 1):
        with pytest.raises(UpdateFormatError):
            apply_update(fmt, base, body[:cut])
    with pytest.raises(UpdateFormatError):
        apply_update(fmt, base, b"\x00" * 64)


def _qdelta_raw(payload: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(payload)


@pytest.mark.parametrize(
    "payload",
    [
        b"QD1" + np.array([1, 99999, 1], "<u4").tobytes() + bytes(5),  # no such tensor
        b"QD1" + np.array([1, 1, 1], "<u4").tobytes() + bytes(5),  # tensor 1 is an activation
        b"QD1" + np.array([2], "<u4").tobytes(),  # table promises more than it holds
        b"QD2" + bytes(8),  # wrong magic
    ],
)
def test_qdelta_rejects_inconsistent_tables(base, payload):
    with pytest.raises(UpdateFormatError):
        apply_update(UpdateFormat.QDELTA, base, _qdelta_raw(payload))


def test_qdelta_rejects_out_of_range_and_repeated_positions(base):
    model = TFLiteFile(base)
    tensor = model.trainable[0]
    for gaps in ([tensor.size], [3, 0]):
        table = np.array([1, tensor.index, len(gaps)], "<u4").tobytes()
        body = b"QD1" + table + np.array(gaps, "<u4").T.tobytes()
        body += bytes(len(gaps) * tensor.dtype.itemsize)
        with pytest.raises(UpdateFormatError, match="positions"):
            apply_update(UpdateFormat.QDELTA, base, _qdelta_raw(body))


def test_decompression_bombs_are_refused(base):
    bomb = zstandard.ZstdCompressor().compress(b"QD1" + bytes(200 * 2**20))
    with pytest.raises(UpdateFormatError):
        apply_update(UpdateFormat.QDELTA, base, bomb)
    packed = gzip.compress(bytes(10 * 2**20))
    mask_bomb = b"AF1" + np.array([len(packed)], "<u4").tobytes() + packed
    with pytest.raises(UpdateFormatError, match="mask"):
        apply_update(UpdateFormat.AMS_FP16, base, mask_bomb)


def test_non_tflite_base_is_refused():
    with pytest.raises(UpdateFormatError):
        apply_update(UpdateFormat.QDELTA, b"not a model at all", b"")
    with pytest.raises(TFLiteFormatError):
        TFLiteFile(b"\x00\x00\x00\x00TFL3" + bytes(10))


def _update(base: bytes, result: bytes, fmt: UpdateFormat) -> Update:
    return Update(
        base_version=0,
        base_sha256=hashlib.sha256(base).hexdigest(),
        new_version=1,
        result_sha256=hashlib.sha256(result).hexdigest(),
        format=fmt,
    )


@pytest.mark.parametrize("parsed", [False, True])
def test_verify_and_apply_gives_the_promised_file_and_its_layout(base, parsed):
    model = TFLiteFile(base)
    target = model.patched(_perturbed(model, 0.01, 11))
    body = qdelta.encode(model, _perturbed(model, 0.01, 11))
    applied = verify_and_apply(
        _update(base, target, UpdateFormat.QDELTA), model if parsed else base, body
    )
    assert applied.data == target
    assert applied.layout is not None and applied.layout.data == target
    # the layout is the next update's base: the same values as a fresh parse
    tensor = model.trainable[-1]
    assert np.array_equal(applied.layout.values(tensor), TFLiteFile(target).values(tensor))


def test_verify_and_apply_of_an_opaque_format_keeps_no_layout(base):
    model = TFLiteFile(base)
    target = model.patched(_perturbed(model, 0.01, 12))
    body = zpatch.encode(base, target)
    applied = verify_and_apply(_update(base, target, UpdateFormat.ZPATCH), model, body)
    assert applied.data == target and applied.layout is None


def test_verify_and_apply_refuses_a_file_other_than_the_promised_one(base):
    model = TFLiteFile(base)
    body = qdelta.encode(model, _perturbed(model, 0.01, 13))
    promised = model.patched(_perturbed(model, 0.01, 14))
    with pytest.raises(ResultHashMismatch, match="result_sha256"):
        verify_and_apply(_update(base, promised, UpdateFormat.QDELTA), base, body)
    # a qdelta body read as zpatch decompresses, but to the wrong file
    wrong_format = _update(base, model.patched(_perturbed(model, 0.01, 13)), UpdateFormat.ZPATCH)
    with pytest.raises(ResultHashMismatch):
        verify_and_apply(wrong_format, base, body)


@pytest.mark.parametrize("fmt", list(UpdateFormat))
def test_verify_and_apply_refuses_a_corrupt_body_or_base(base, fmt):
    update = _update(base, base, fmt)
    with pytest.raises(UpdateFormatError) as refused:
        verify_and_apply(update, base, b"\x00" * 64)
    assert not isinstance(refused.value, ResultHashMismatch)
    if fmt != UpdateFormat.ZPATCH:  # zpatch applies to any bytes
        with pytest.raises(UpdateFormatError, match="base model"):
            verify_and_apply(update, b"not a model at all", b"")


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=0, max_size=400))
def test_random_bodies_never_crash(base, body):
    for fmt in UpdateFormat:
        with contextlib.suppress(UpdateFormatError):
            apply_update(fmt, base, body)


def test_signatures_bind_device_versions_and_bodies(tmp_path):
    key = save_keypair(tmp_path / "trainer.pem", tmp_path / "trainer.pub")
    assert (tmp_path / "trainer.pem").stat().st_mode & 0o777 == 0o600
    public = load_public_key(tmp_path / "trainer.pub")
    reloaded = load_private_key(tmp_path / "trainer.pem").public_key()
    assert reloaded.public_bytes_raw() == public.public_bytes_raw()
    update = Update(base_version=1, base_sha256="d" * 64, new_version=2, result_sha256="a" * 64)
    payload = signing_payload("cam-1", update, "b" * 64)
    signature = sign(key, payload)
    assert verify(public, payload, signature)
    assert not verify(public, signing_payload("cam-2", update, "b" * 64), signature)
    assert not verify(public, signing_payload("cam-1", update, "c" * 64), signature)
    bumped = update.model_copy(update={"new_version": 3})
    assert not verify(public, signing_payload("cam-1", bumped, "b" * 64), signature)
    assert not verify(public, payload, None)
    assert not verify(public, payload, "zz")
    # the signature field itself is not covered, so a signed message verifies
    signed = update.model_copy(update={"signature": signature})
    assert verify(public, signing_payload("cam-1", signed, "b" * 64), signature)
    model = Model(version=2)
    assert signing_payload("cam-1", model, "b" * 64) != payload
    raw = tmp_path / "raw.pub"
    raw.write_bytes(public.public_bytes_raw())
    assert verify(load_public_key(raw), payload, signature)
    (tmp_path / "bad.pub").write_bytes(b"nope")
    with pytest.raises(ValueError):
        load_public_key(tmp_path / "bad.pub")
