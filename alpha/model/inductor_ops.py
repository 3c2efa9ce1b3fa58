"""Our custom ops (namespace ``alpha``) made known to Inductor before it compiles a model.

Inductor lowers an op it has no lowering for as a call to the op ("implicit fallback"), with the
layout constraint the op's tags ask for, the first time it meets it. PyTorch 2.11 formats the IR
of that first call's arguments for a log line on the way, whether or not the line is logged, and
for an op fed by a chain of other such ops that text grows with every op in the chain (LayerNorms
as ops, each taking the residual stream the previous one returned, kept the compilation of the
seed model from finishing within minutes). ``register_fallbacks`` does the same
registration up front, for every ``alpha`` op defined so far, so that Inductor never takes that
path for them; it imports Inductor, so it is called where a compilation is about to happen anyway.
"""

from __future__ import annotations

import torch

NAMESPACE = "alpha"


def register_fallbacks() -> None:
    """Lower every ``alpha::`` op as a call to its implementation, as Inductor would itself."""
    from torch._inductor import lowering
    from torch._library.utils import get_layout_constraint_tag

    for name in torch._C._dispatch_get_all_op_names():
        namespace, _, op_name = name.partition("::")
        if namespace != NAMESPACE:
            continue
        overload_name = op_name.partition(".")[2] or "default"
        op = getattr(getattr(torch.ops.alpha, op_name.partition(".")[0]), overload_name)
        if op in lowering.lowerings:
            continue
        constraint = lowering.tag_to_layout_constraint(get_layout_constraint_tag(op, with_default=True))
        lowering.make_fallback(op, layout_constraint=constraint)
