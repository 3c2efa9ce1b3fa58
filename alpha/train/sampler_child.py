"""The sampler process itself: build a CPU model for each request and generate its samples.

``serve`` is the target of the child that ``alpha.train.sampler_process`` starts (spawn method).
This module imports only the standard library at the top, so the child ignores SIGINT and SIGTERM
within milliseconds of starting, before torch is imported: Ctrl+C reaches the whole process group,
and the training process alone decides what happens (its first Ctrl+C finishes the run, which
waits for the samples in flight). The child exits when asked (a ``None`` request), or when the
training process is gone: its request pipe then reaches end-of-file.

The child works on the CPU only, with ``threads_for_sampling()`` torch threads. It keeps the model
it built for the last config and rebuilds it only when the config changes (a symbio search changes
the activation between rounds); the weights of every request are loaded into it.
"""

from __future__ import annotations

import io
import os
import signal
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class SampleRequest:
    """One sample round. Token ids go in and come out: the tokenizer stays in the training process."""

    step: int
    model_config: dict[str, Any]  # ModelConfig.to_wire(), sent every round: the activation may change
    prompts: list[list[int]]
    max_new_tokens: int
    stop_id: int | None
    seed: int
    # set by SamplerProcess.submit: CPU tensors in shared memory (torch passes file descriptors),
    # or, where shared memory is short, the bytes of a torch.save'd state dict
    weights: dict[str, torch.Tensor] | bytes | None = None


@dataclass
class SampleResult:
    """The new token ids of every prompt, or the traceback of what went wrong."""

    outputs: list[list[int]] | None = None
    error: str | None = None


def threads_for_sampling() -> int:
    """Half the cores, at most 4. The other half stays with the training process, which feeds the
    GPU; one sequence of a small model decoded token by token gains little beyond a few threads
    (each token is a handful of small matrix-vector products)."""
    return min(4, max(1, (os.cpu_count() or 1) // 2))


def serve(requests: Connection, results: Connection, threads: int) -> None:
    """Answer requests until told to stop or the training process goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU-only process: it never creates a GPU context

    import torch

    import alpha.model.gpt  # noqa: F401  imported now, not in the first round (about a second)
    import alpha.train.sampling  # noqa: F401

    torch.set_num_threads(threads)
    sampler = CpuSampler()
    while True:
        try:
            request = requests.recv()
        except EOFError:
            return
        except Exception:  # the message could not be read (e.g. a weight's shared memory)
            result = SampleResult(error=traceback.format_exc())
        else:
            if request is None:
                return
            result = sampler.answer(request)
            del request  # unmap the round's weights now
        try:
            results.send(result)
        except OSError:  # the training process is gone
            return


class CpuSampler:
    """Generates on a CPU GPT, kept from round to round while the model config stays the same."""

    def __init__(self) -> None:
        self.model: Any = None
        self.config: dict[str, Any] | None = None

    def answer(self, request: SampleRequest) -> SampleResult:
        import torch

        from alpha.config import ModelConfig
        from alpha.model.gpt import GPT
        from alpha.train.sampling import sample_prompts

        try:
            if self.model is None or self.config != request.model_config:
                self.model, self.config = None, None
                self.model = GPT(ModelConfig.from_wire(request.model_config))
                self.config = request.model_config
            weights = request.weights
            if isinstance(weights, bytes):
                weights = torch.load(io.BytesIO(weights), weights_only=True)
            self.model.load_state_dict(weights)
            outputs = sample_prompts(
                self.model,
                request.prompts,
                request.max_new_tokens,
                seed=request.seed,
                stop_id=request.stop_id,
            )
        except Exception:
            return SampleResult(error=traceback.format_exc())
        return SampleResult(outputs=outputs)
