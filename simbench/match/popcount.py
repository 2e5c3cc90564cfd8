"""popcount for numba kernels, as the LLVM intrinsic (one POPCNT instruction on x86-64)."""
from __future__ import annotations

from numba import types
from numba.extending import intrinsic


@intrinsic
def popcount64(typingctx, x):
    """Number of set bits of a uint64, compiled to llvm.ctpop.i64."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        (value,) = args
        value = builder.zext(value, context.get_value_type(types.uint64)) if x.bitwidth < 64 else value
        return builder.ctpop(value)

    return types.uint64(x), codegen
