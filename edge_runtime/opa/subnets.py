"""The sub-networks of an elastic student, read from its model file.

An elastic student is one TFLite file whose subgraph 0 is the whole student and whose further
subgraphs, reached through signatures, are its sub-networks, all reading the same weight
buffers (so one verified update patches every sub-network at once). A sub-network at input
resolution R that skips D residual blocks runs as two signatures: the *pioneer* at R (the
shared first stages, seed 004 §IV), then the *tail* (R, D), which continues from the pioneer's
features (subnet inheritance, §IV-C); the *head* at R scores the pioneer's features, the
confidences OPA's accuracy estimator reads (eq. 1).

The signature keys below are the one grammar the trainer writes and the device reads. What a
sub-network costs is counted from its own graph here (the file is the truth for its geometry),
never taken from a table shipped beside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from ai_edge_litert import schema_py_generated as schema

from shared_schema.tflite_file import Signature, TFLiteFile, TFLiteFormatError

# The tensors' names in the signatures.
IMAGE, FEATURES, SCORES, LABELS = "image", "features", "scores", "labels"
_CONVOLUTIONS = (schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D)
_KEY = re.compile(r"opa_(pioneer|head|tail)_r(\d+)(?:_d(\d+))?")
# What each role's signature takes and gives.
_TENSORS = {"pioneer": (IMAGE, FEATURES), "head": (FEATURES, SCORES), "tail": (FEATURES, LABELS)}


def pioneer_key(resolution: int) -> str:
    return f"opa_pioneer_r{resolution}"


def head_key(resolution: int) -> str:
    return f"opa_head_r{resolution}"


def tail_key(resolution: int, depth: int) -> str:
    return f"opa_tail_r{resolution}_d{depth}"


def whole_key(resolution: int, depth: int) -> str:
    """A sub-network in one subgraph: built only to measure inheritance against."""
    return f"opa_whole_r{resolution}_d{depth}"


def macs(file: TFLiteFile, subgraph: int) -> int:
    """Multiply-accumulates of one subgraph's convolutions, from its own tensor shapes: the F()
    of seed 004 eq. 2 (its other ops cost little against them)."""
    total = 0
    for op in file.operators_of(subgraph):
        if op.code not in _CONVOLUTIONS:
            continue
        out = file.tensor(op.outputs[0], subgraph).shape
        kernel = file.tensor(op.inputs[1], subgraph).shape  # OHWI, or 1HWO when depthwise
        depth_in = kernel[3] if op.code == schema.BuiltinOperator.CONV_2D else 1
        total += out[1] * out[2] * out[3] * kernel[1] * kernel[2] * depth_in
    return total


@dataclass(frozen=True)
class Subnet:
    """One sub-network: the pioneer at its resolution, then its tail."""

    resolution: int
    depth: int  # residual blocks it skips
    pioneer: Signature
    tail: Signature
    macs: int  # the pioneer's and the tail's together

    @property
    def name(self) -> str:
        return f"r{self.resolution}_d{self.depth}"


class ElasticModel:
    """The sub-networks an elastic student's file declares, largest first; `ElasticModel.of`
    raises TFLiteFormatError for a file that declares none, or a tail without its pioneer or
    head."""

    def __init__(self, file: TFLiteFile) -> None:
        self.file = file
        found: dict[str, dict[tuple[int, ...], Signature]] = {"pioneer": {}, "head": {}, "tail": {}}
        for key, signature in file.signatures.items():
            match = _KEY.fullmatch(key)
            if match is None:
                continue
            role, resolution, depth = match.groups()
            takes, gives = _TENSORS[role]
            if (list(signature.inputs), list(signature.outputs)) != ([takes], [gives]):
                raise TFLiteFormatError(f"signature {key} must map {takes} -> {gives}")
            where = (int(resolution),) if depth is None else (int(resolution), int(depth))
            found[role][where] = signature
        self.pioneers = {r: s for (r,), s in found["pioneer"].items()}
        self.heads = {r: s for (r,), s in found["head"].items()}
        subnets = []
        for (resolution, depth), tail in found["tail"].items():
            if resolution not in self.pioneers or resolution not in self.heads:
                raise TFLiteFormatError(f"{tail.key} has no pioneer or head at r{resolution}")
            pioneer = self.pioneers[resolution]
            cost = macs(file, pioneer.subgraph) + macs(file, tail.subgraph)
            subnets.append(Subnet(resolution, depth, pioneer, tail, cost))
        if not subnets:
            raise TFLiteFormatError("the model declares no OPA sub-network (opa_tail_* signature)")
        self.subnets = tuple(sorted(subnets, key=lambda s: -s.macs))

    @classmethod
    def of(cls, data: bytes) -> ElasticModel:
        return cls(TFLiteFile(data))

    @cached_property
    def scores_tensor(self) -> int:
        """The tensor every head writes its class scores to."""
        indices = {s.outputs[SCORES] for s in self.heads.values()}
        if len(indices) != 1:
            raise TFLiteFormatError("the heads write their scores to different tensors")
        return indices.pop()

    @cached_property
    def pioneer_macs(self) -> dict[int, int]:
        """Each pioneer's multiply-accumulates, by resolution: FLOP_pioneer of eq. 2."""
        return {r: macs(self.file, s.subgraph) for r, s in self.pioneers.items()}

    @property
    def largest(self) -> Subnet:
        return self.subnets[0]

    @property
    def smallest(self) -> Subnet:
        return self.subnets[-1]
