"""Our custom ops (namespace ``alpha``) made known to Inductor before it compiles a model.

Inductor lowers an op it has no lowering for as a call to the op ("implicit fallback"), with the
layout constraint the op's tags ask for, the first time it meets it. PyTorch 2.11 formats the IR
of that first call's arguments for a log line on the way, whether or not the line is logged, and
for an op fed by a chain of other such ops that text grows with every op in the chain (LayerNorms
as ops, each taking the residual stream the previous one returned, kept the compilation of the
seed model from finishing within minutes). ``register_fallbacks`` does the same
registration up front, for every ``alpha`` op defined so far, so that Inductor never takes that
path for them; it imports Inductor, so it is called where a compilation is about to happen anyway.

It also puts a digest of the ops' schemas and tags into torch.compile's cache key
(``torch.compiler.config.cache_key_tag``). The key of Inductor's FX graph cache covers the traced
graph but not the tags of the custom ops in it, and a tag decides the layout Inductor hands an op
(a ``flexible_layout`` op takes padded logits as they are; without the tag a cached graph keeps
copying them), so a graph compiled under other tags must not be reused.

``register_fallbacks`` also routes the final sums of Inductor's mix-order reductions (the
LayerNorm backward's weight and bias gradients over many rows) to ``alpha::column_sum_deferred``
(``alpha.model.column_sums``), and the cache key says whether it did.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

import torch

NAMESPACE = "alpha"
CACHE_TAG_PREFIX = "alpha-ops-"


def _ops() -> Iterator[torch._ops.OpOverload]:
    """Every ``alpha::`` op defined so far."""
    for name in sorted(torch._C._dispatch_get_all_op_names()):
        namespace, _, op_name = name.partition("::")
        if namespace != NAMESPACE:
            continue
        overload_name = op_name.partition(".")[2] or "default"
        yield getattr(getattr(torch.ops.alpha, op_name.partition(".")[0]), overload_name)


def ops_fingerprint() -> str:
    """A digest of every ``alpha::`` op's schema and tags, and of whether Inductor's mix-order
    reductions are routed to ``alpha::column_sum_deferred`` (``alpha.model.column_sums``)."""
    from alpha.model import column_sums

    lines = sorted(f"{op._schema} {sorted(str(tag) for tag in op.tags)}" for op in _ops())
    lines.append(f"mix-order sums routed: {column_sums.enabled()}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def tag_compile_caches() -> None:
    """Make ``ops_fingerprint()`` part of torch.compile's cache key, next to any tag already set."""
    from torch.compiler import config

    if not hasattr(config, "cache_key_tag"):  # a PyTorch without the setting: nothing to key by
        return
    others = re.sub(rf"\+?{CACHE_TAG_PREFIX}[0-9a-f]+", "", config.cache_key_tag)
    ours = CACHE_TAG_PREFIX + ops_fingerprint()
    config.cache_key_tag = f"{others}+{ours}" if others else ours


def register_fallbacks() -> bool:
    """Lower every ``alpha::`` op as a call to its implementation, as Inductor would itself, and
    key the compile caches by the ops' tags (``tag_compile_caches``); True where the mix-order
    reductions' final sums are routed to ``alpha::column_sum_deferred``."""
    from torch._inductor import lowering
    from torch._library.utils import get_layout_constraint_tag

    from alpha.model.column_sums import route_mix_order_sums

    routed = route_mix_order_sums()
    for op in _ops():
        if op in lowering.lowerings:
            continue
        constraint = lowering.tag_to_layout_constraint(get_layout_constraint_tag(op, with_default=True))
        lowering.make_fallback(op, layout_constraint=constraint)
    tag_compile_caches()
    return routed
