"""Our ops made known to Inductor (``alpha.model.inductor_ops``): a graph compiled while an op had
other tags is not taken from torch.compile's caches."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from alpha.model.inductor_ops import CACHE_TAG_PREFIX, ops_fingerprint, register_fallbacks

# One process compiles, with padding on as on a GPU, a GEMM whose output (saved for the op's
# backward, so Inductor pads its rows: 4001 -> 4032) feeds an op; argv[1] says whether the op takes any
# layout. It prints COPY when Inductor copies the GEMM's output for the op first.
PROBE = textwrap.dedent(
    """
    import re, sys
    import torch
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    tags = (torch.Tag.flexible_layout,) if sys.argv[1] == "1" else ()

    @torch.library.custom_op("alpha::cache_probe", mutates_args=(), tags=tags)
    def probe(x: torch.Tensor) -> torch.Tensor:
        return x.sum(1)

    @probe.register_fake
    def _(x):
        return x.new_empty(x.shape[0])

    def keep_input(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])  # saved, so Inductor pads it

    probe.register_autograd(lambda ctx, g: g[:, None] * ctx.saved_tensors[0].sign(), setup_context=keep_input)

    from alpha.model.inductor_ops import register_fallbacks
    register_fallbacks()

    def f(a, w):
        return probe(a @ w.t())

    a, w = torch.randn(64, 32), torch.randn(4001, 32, requires_grad=True)
    with config.patch(disable_padding_cpu=False):
        _, (code, *_) = run_and_get_code(torch.compile(f, fullgraph=True), a, w)
    print("COPY" if re.search(r"def \\w*cache_probe|cpp_fused\\w*cache_probe\\w* =", code) else "NO COPY")
    """
)


def _compile_in_a_process(flexible: bool, cache: Path, script: Path) -> str:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache), PYTHONPATH=str(Path(__file__).parents[2]))
    command = [sys.executable, str(script), "1" if flexible else "0"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_a_graph_compiled_under_other_op_tags_is_not_reused(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    cache = tmp_path / "inductor-cache"
    assert _compile_in_a_process(False, cache, script) == "COPY"  # exact strides: a copy first
    assert _compile_in_a_process(True, cache, script) == "NO COPY"  # same graph, the op retagged


def test_the_cache_tag_follows_the_ops_and_keeps_a_users_tag() -> None:
    config = torch.compiler.config
    saved = config.cache_key_tag
    try:
        config.cache_key_tag = "mine"
        register_fallbacks()
        register_fallbacks()
        assert config.cache_key_tag == f"mine+{CACHE_TAG_PREFIX}{ops_fingerprint()}"
        config.cache_key_tag = ""
        register_fallbacks()
        assert config.cache_key_tag == CACHE_TAG_PREFIX + ops_fingerprint()
    finally:
        config.cache_key_tag = saved
