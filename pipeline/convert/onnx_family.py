"""The ONNX Runtime Web family: each entry of pipeline.convert.onnx.VARIANTS as a VariantSpec."""
from __future__ import annotations

from pathlib import Path

from pipeline.convert import onnx as conv
from pipeline.families import BuildInputs, VariantSpec


def _builder(variant: conv.OnnxVariant):
    def build(inputs: BuildInputs, out_dir: Path) -> list[Path]:
        dst = out_dir / "model.onnx"
        ctx = conv.BuildContext(calibration=inputs.calibration, calibration_batch=inputs.calibration_batch)
        variant.build(inputs.canonical_onnx, dst, ctx)
        return [dst]

    return build


def variants() -> list[VariantSpec]:
    return [
        VariantSpec(family="onnx", name=v.name, runtime="ort", backends=tuple(v.backends), build=_builder(v),
                    needs_calibration=v.needs_calibration, required_features=dict(v.required_features),
                    description=v.description)
        for v in conv.VARIANTS.values()
    ]
