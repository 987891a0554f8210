"""``cloud-trainer opa``: build the elastic student a device runs OPA with, and measure its forms.

    cloud-trainer opa build --student S.tflite --video V --out E.tflite
                            [--teacher T.tflite] [--resolutions 513,385,257] [--depths 0,4,8]
    cloud-trainer opa forms --student S.tflite --video V [--frames N]

``build`` fits the pioneer's head and OPA's selection (estimator and predictors, in the file's
metadata) on frames of V, labelled by the teacher where one is given (else by the student
itself), and writes the elastic file; with ``--train-steps`` the first half of the frames (in
time) trains the sub-networks and the second half fits the selection; ``forms`` prints and writes
(benchmarks/results/opa-forms-*.json) the latency, load time and memory of the file's forms.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from shared_schema.bench_results import add_results_dir_option, write_result
from shared_schema.cli import fail


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None


def add_opa_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``opa build`` and ``opa forms`` on a command's subparsers."""
    opa = subparsers.add_parser("opa", help="OPA's elastic student: build it, measure its forms")
    actions = opa.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = actions.add_parser("build", help="write the elastic student of a quantized student")
    forms = actions.add_parser("forms", help="latency, load time and memory of its forms (JSON)")
    for parser in (build, forms):
        parser.add_argument("--student", required=True, type=Path, help="the student .tflite")
        parser.add_argument("--video", required=True, help="frames to fit the head (and time)")
        parser.add_argument("--teacher", type=Path, help="labels the head's frames (.tflite)")
        parser.add_argument("--resolutions", type=_ints, default=(513, 385, 257))
        parser.add_argument("--depths", type=_ints, default=(0, 4, 8))
        parser.add_argument("--pioneer-stride", type=int, default=4)
        parser.add_argument("--frames", type=int, default=24, help="frames of the video to use")
    build.add_argument("--out", required=True, type=Path, help="the elastic .tflite to write")
    build.add_argument(
        "--train-steps", type=int, default=0, help="sandwich-rule steps before fitting OPA (0)"
    )
    build.set_defaults(func=_build)
    add_results_dir_option(forms)
    forms.set_defaults(func=_forms)


def _prepared(args: argparse.Namespace):
    """The student's bytes, the frames, the head fitted on them and the layout."""
    from cloud_trainer.opa.elastic import ElasticLayout
    from cloud_trainer.opa.head import fit_head
    from edge_runtime.backends.litert import LiteRtConfig
    from edge_runtime.sources import open_source

    student = args.student.read_bytes()
    labeller = (args.teacher or args.student).read_bytes()
    with open_source(args.video) as source:
        every = [f.rgb(513, 513) for _, f in zip(range(args.frames * 10), source, strict=False)]
    frames = every[:: max(1, len(every) // args.frames)][: args.frames]
    if not frames:
        raise ValueError(f"{args.video}: no frames")
    with LiteRtConfig(threads=2).open(labeller) as engine:
        labels = [engine.infer(f) for f in frames]
    layout = ElasticLayout(args.resolutions, args.depths, args.pioneer_stride)
    head = fit_head(student, frames, labels, args.pioneer_stride)
    return student, frames, labels, head, layout


def _build(args: argparse.Namespace) -> int:
    from cloud_trainer.opa.elastic import ElasticBuildError, elastic_model
    from cloud_trainer.opa.fit import fit_selector, measure, with_selector
    from cloud_trainer.opa.train import ElasticTraining, train_elastic
    from edge_runtime.opa.runner import ElasticRunner
    from edge_runtime.opa.subnets import ElasticModel

    try:
        student, frames, labels, head, layout = _prepared(args)
        data = elastic_model(student, head, layout)
    except (OSError, ValueError, ElasticBuildError) as exc:
        return fail(exc)
    losses: list[float] = []
    fitted = 0  # the first frame OPA's selection is fitted on: as many trained before it
    if args.train_steps and len(frames) > 1:
        # The selection predicts accuracy on frames the sub-networks never trained on: fitted
        # on the frames they trained on, it ranks them by how well they memorised.
        fitted = len(frames) // 2
        settings = ElasticTraining(steps=args.train_steps)
        data, losses = train_elastic(data, frames[:fitted], labels[:fitted], settings)
    measured = measure(ElasticRunner(data), frames[fitted:], labels[fitted:])
    data = with_selector(data, fit_selector(measured))
    args.out.write_bytes(data)
    subnets = [
        {"name": s.name, "macs": s.macs, "miou": round(float(np.mean(measured.miou[s.name])), 4)}
        for s in ElasticModel.of(data).subnets
    ]
    losses = [round(v, 4) for v in losses[:3] + losses[-3:]]
    report = {
        "out": str(args.out),
        "bytes": len(data),
        "frames": {"trained": fitted, "fitted": len(frames) - fitted},
        "losses": losses,
        "subnets": subnets,
    }
    print(json.dumps(report, indent=2))
    return 0


def _forms(args: argparse.Namespace) -> int:
    from cloud_trainer.opa.forms import measure_forms

    try:
        student, frames, _, head, layout = _prepared(args)
    except (OSError, ValueError) as exc:
        return fail(exc)
    result = measure_forms(student, head, frames, layout)
    result["video"] = str(args.video)
    print(json.dumps(result, indent=2))
    print(f"written: {write_result('opa-forms', result, args.results_dir)}")
    return 0


__all__ = ["add_opa_parser"]
