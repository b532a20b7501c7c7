"""WebGPU schedules for TVM modules: dlight's default GPU rules, with two rules of ours placed before them (each
measured on SwiftShader in Chromium; see the rule's docstring)."""
from __future__ import annotations

import math


# Reductions at most this long run serially in one thread per output (dlight Fallback) instead of dlight's
# GeneralReduction, which gives every output element a 64-thread workgroup and a shared-memory tree reduction.
# Measured on MobileNet V2 (SwiftShader, Chromium 156): its depthwise 3x3 convolutions reduce 9 elements, and with
# GeneralReduction one inference took 146 s (401,408 workgroups for the first depthwise layer alone).
SHORT_REDUCTION = 64


def _reduction_extents(func) -> list[list[int]] | None:
    """Static extents of the reduction iterators of each reduction block (None when a block has a symbolic one)."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    infos = normalize_prim_func(s_tir.Schedule(func))
    if not infos:
        return None
    out = []
    for info in infos:
        if not info.is_reduction():
            continue
        extents = []
        for kind, dom in zip(info.dom_kind(), info.dom()):
            if kind == "R":
                if not isinstance(dom, int) and not hasattr(dom, "value"):
                    return None
                extents.append(int(dom if isinstance(dom, int) else dom.value))
        out.append(extents)
    return out


def matmul_rule():
    """dlight's Matmul rule, except for convolutions with a spatial kernel (several reduction axes longer than 1):
    on fashion_cnn's 3x3 convolutions its shaders never finished compiling in SwiftShader (session stage > 5 min,
    then the GPU process was lost: "A valid external Instance reference no longer exists"). Without it the same
    model loads in 0.8 s. Matmuls and 1x1 convolutions (MobileNet's) keep the rule."""
    from tvm import tirx
    from tvm.s_tir import dlight as dl
    from tvm.s_tir.dlight.gpu.base import GPUScheduleRule

    class MatmulNoSpatialConv(GPUScheduleRule):
        def apply(self, func, target, tunable):
            if not isinstance(func, tirx.PrimFunc):
                return None
            blocks = _reduction_extents(func)
            if blocks is None or any(sum(e > 1 for e in extents) > 1 for extents in blocks):
                return None
            return dl.gpu.Matmul().apply(func, target, tunable)

    return MatmulNoSpatialConv()


def short_reduction_rule():
    """dlight rule: Fallback for blocks whose reductions are all short (static extent <= SHORT_REDUCTION)."""
    from tvm import tirx
    from tvm.s_tir import dlight as dl
    from tvm.s_tir.dlight.gpu.base import GPUScheduleRule

    class ShortReduction(GPUScheduleRule):
        def apply(self, func, target, tunable):
            if not isinstance(func, tirx.PrimFunc):
                return None
            blocks = _reduction_extents(func)
            if not blocks or max(math.prod(extents) for extents in blocks) > SHORT_REDUCTION:
                return None  # symbolic, no reduction, or a long one: the general rules
            return dl.gpu.Fallback().apply(func, target, tunable)

    return ShortReduction()


def gpu_schedule(mod, tgt):
    """Relax module -> the same with every kernel scheduled for WebGPU (thread bindings everywhere): the zero
    pipeline (legalize + fuse), then the rules in order, first match wins."""
    from tvm import relax
    from tvm.s_tir import dlight as dl

    with tgt:
        mod = relax.get_pipeline("zero")(mod)
        return dl.ApplyDefaultSchedule(matmul_rule(), dl.gpu.GEMV(), dl.gpu.Reduction(), short_reduction_rule(),
                                       dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)
