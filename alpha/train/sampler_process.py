"""Training samples in a persistent child process: the default on CUDA.

Decoding token by token is Python-heavy. On a thread of the training process it competes with the
loop for the GIL (on an H200, 2-5 ms lost per 4.8 ms step while a round runs); a child process has
an interpreter of its own. Each round, the weights are copied once into shared host memory
(``HostWeights``: no copy of the module, nothing left on the GPU) and sent with the model config,
the prompts' token ids, the seed and the length; the child (``alpha.train.sampler_child``)
builds a CPU GPT for that config, loads the weights and sends back the new token ids, which the
trainer decodes and emits as a Samples event at a later log boundary.

- The child is started when the run starts (its start-up, spawn plus imports, takes seconds and
  overlaps compilation), with the spawn method (a CUDA process is never forked), and kept for the
  rest of the run; a dead child is started again at the next round.
- One round at a time: a round that comes due while the previous one is still generating is
  skipped (a debug note in the log), except the run's last round, which waits for it.
- A round that fails (it raised in the child, or the child died) becomes an Alert ``sample_failed``
  and training goes on. A dead child is replaced at the next round; after ``MAX_FAILURES`` failed
  rounds in a row, samples stay off for the rest of the run.
- At the end of the run the trainer waits for the round in flight, then asks the child to exit. A
  child whose training process died sees end-of-file on its request pipe and exits.

``ALPHA_SAMPLER`` chooses where samples are generated: ``process`` (the default on CUDA) or
``inline`` (the default on CPU: in the loop, which waits for them, on the training model itself).
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import traceback
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

import torch
import torch.multiprocessing as mp
from torch import nn

from alpha.errors import ConfigError
from alpha.train.host_buffers import HostBuffers, specs
from alpha.train.sampler_child import SampleRequest, SampleResult, serve, threads_for_sampling

SAMPLER_ENV = "ALPHA_SAMPLER"
MODES = ("process", "inline")
MAX_FAILURES = 3
STOP_TIMEOUT_S = 10.0  # an idle child asked to exit is killed after this long


def sampler_mode(device: torch.device) -> str:
    """``$ALPHA_SAMPLER``, or the default for the device: process on CUDA, inline elsewhere."""
    mode = os.environ.get(SAMPLER_ENV, "").strip().lower()
    if not mode:
        return "process" if device.type == "cuda" else "inline"
    if mode not in MODES:
        raise ConfigError(f"${SAMPLER_ENV} must be one of {', '.join(MODES)} (got {mode!r})")
    return mode


class HostWeights:
    """Host copies of the model's weights for the child, in shared memory (``HostBuffers``) that
    the child maps without another copy. Refilling is safe because a round is sent only once the
    previous one has been answered. A CPU model's weights are copied too: the child must not see
    them change while it generates.

    Where shared memory is too small for them (a container's default 64 MB /dev/shm, say), the
    weights go by value through the pipe instead, as the bytes of a ``torch.save``'d state dict.

    ``reserve_in_background`` allocates the shared buffers on a thread of their own (when the
    sampler starts, alongside compilation), so that the first round only copies.
    """

    def __init__(self) -> None:
        self.buffers = HostBuffers("shared")
        self.shared = True
        self._reserving: threading.Thread | None = None

    def reserve_in_background(self, model: nn.Module) -> None:
        wanted = specs(model.state_dict())

        def reserve() -> None:
            with contextlib.suppress(RuntimeError):  # no room in shared memory: the first copy finds out
                self.buffers.reserve(wanted)

        self._reserving = threading.Thread(target=reserve, name="alpha-sampler-buffers", daemon=True)
        self._reserving.start()

    def copy(self, model: nn.Module) -> dict[str, torch.Tensor] | bytes:
        if self._reserving is not None:
            self._reserving.join()
            self._reserving = None
        state = model.state_dict()
        if self.shared:
            try:
                return self.buffers.copy(state)
            except RuntimeError:  # "unable to allocate shared memory(shm) ..."
                self.shared, self.buffers = False, HostBuffers()
        buffer = io.BytesIO()
        torch.save({name: value.detach().cpu() for name, value in state.items()}, buffer)
        return buffer.getvalue()


class SamplerProcess:
    """The training process's handle on the sampler child: one request in flight at a time."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or threads_for_sampling()
        self.failures = 0  # failed rounds in a row
        self.in_flight: int | None = None  # the step of the round being generated
        self.host = HostWeights()
        self._failed: SampleResult | None = None  # a round that could not be sent
        self._process: BaseProcess | None = None
        self._requests: Connection | None = None
        self._results: Connection | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def gave_up(self) -> bool:
        return self.failures >= MAX_FAILURES

    def start(self) -> int:
        """Start a child (replacing a dead one); returns its pid."""
        self._discard()
        ctx = mp.get_context("spawn")
        child_requests, self._requests = ctx.Pipe(duplex=False)
        self._results, child_results = ctx.Pipe(duplex=False)
        args = (child_requests, child_results, self.threads)
        self._process = ctx.Process(target=serve, args=args, name="alpha-sampler", daemon=True)
        self._process.start()
        # the child now holds the only copies of its ends: each side sees end-of-file when the other exits
        child_requests.close()
        child_results.close()
        return self._process.pid  # type: ignore[return-value]

    def submit(self, request: SampleRequest, model: nn.Module) -> None:
        """Copy ``model``'s weights into the request and send it to the running child; the round's
        result (an error too, if it could not be sent) comes from ``result``."""
        if self.in_flight is not None or self._requests is None:
            raise RuntimeError("the sampler process is busy or not started")
        self.in_flight = request.step
        try:
            request.weights = self.host.copy(model)
            self._requests.send(request)
        except OSError:  # the child died: result() reports it
            pass
        except Exception:
            self._failed = SampleResult(error=traceback.format_exc())

    def result(self, timeout: float | None = 0.0) -> SampleResult | None:
        """The result of the round in flight once it is done, waiting up to ``timeout`` seconds
        (None: as long as it takes); None while it is still generating or when none is in flight.
        A child that died yields a result carrying the error, and is discarded."""
        if self.in_flight is None or self._results is None or self._process is None:
            return None
        result, self._failed = self._failed, None
        if result is not None:
            return self._finish_round(result)
        if not wait([self._results, self._process.sentinel], timeout):
            return None
        try:
            if self._results.poll():
                result = self._results.recv()
        except (EOFError, OSError):
            pass
        if result is None:  # nothing to read and the child is gone
            self._process.join(1.0)
            result = SampleResult(error=f"the sampler process exited with code {self._process.exitcode}")
            self._discard()
        return self._finish_round(result)

    def _finish_round(self, result: SampleResult) -> SampleResult:
        self.in_flight = None
        self.failures = self.failures + 1 if result.error else 0
        return result

    def close(self) -> None:
        """Stop the child: asked to exit when idle, killed when a round is still generating."""
        if self._process is not None and self.in_flight is None and self._requests is not None:
            try:
                self._requests.send(None)
                self._process.join(STOP_TIMEOUT_S)
            except OSError:
                pass
        self._discard()

    def _discard(self) -> None:
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join()
            self._process.close()
        for conn in (self._requests, self._results):
            if conn is not None:
                conn.close()
        self._process, self._requests, self._results, self.in_flight = None, None, None, None
