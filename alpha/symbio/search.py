"""The generation loop: fork-and-compare from a shared snapshot, select on measured val loss.

Each generation:

1. snapshot the trainer (weights, AdamW moments, guards) and the torch RNG;
2. for every candidate: restore the snapshot, install its activation in every block, train
   ``stepsPerCandidate`` steps on the generation's batches (identical for every candidate: one
   data key) with the learning rates of the generation's first steps (identical too), then
   measure the loss on the trainer's fixed validation windows;
3. rank by ``rankBy``; the winner's trained state (not a retrain) is where the run continues;
4. adapt the population (per generation, from the winners' val losses), select parents
   (``topk`` / ``tournament``), breed the next generation with the mutation rate;
5. rewrite the artifacts, emit a SymbioGeneration event, and run the evals, samples and
   checkpoints whose interval came due during the generation (checkpoints therefore always hold a
   winner's state and the search state of the next generation, so a resume continues exactly).

Every candidate step is an optimizer step of the run and counts toward ``--iters``. When the
search ends (its generations are done, or fewer than two candidates fit in the remaining steps),
the winner's graph trains for the rest of the run. A stop (signal, watchdog) in the middle of a
generation rewinds to the generation's snapshot, so the checkpoint written then is consistent.

The search also owns the CUSUM monitor (a step hook for the whole run) and the optional weight
fusion: after every candidate step, shadow <- shadow + η(p - shadow), p <- p + α(shadow - p)
with η = ``fusionShadowEma`` and a constant α = ``fusionMaxStrength`` (the reference's Kuramoto
controller saturated at that value anyway). The shadow restarts from the weights at the start of
every candidate window, so every candidate gets the same fusion and no extra state is needed to
resume.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from alpha.config import ModelConfig
from alpha.errors import ConfigError
from alpha.events import Alert, Step, SymbioGeneration
from alpha.model.kernel_support import kernels_available
from alpha.symbio.activation import GraphActivation
from alpha.symbio.config import SymbioConfig, from_wire
from alpha.symbio.cusum import CusumMonitor
from alpha.symbio.graph import Basis, Graph, Mul, dumps, from_json, to_json
from alpha.symbio.mutate import mutate
from alpha.symbio.population import (
    Candidate,
    Namer,
    PopulationController,
    breed,
    fitness,
    initial_population,
    plan_budget,
    rank,
    rank_key,
    select_parents,
)
from alpha.symbio.preflight import resume_graph
from alpha.symbio.program import (
    STACK_SLOTS,
    capacity_of,
    encode,
    program_tensor,
    stack_depth,
)
from alpha.symbio.report import REPORT_FILE, SearchState, write_artifacts

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from alpha.train.trainer import Snapshot, StepsSummary, Trainer

STATE_VERSION = 1
# A candidate's graph is compiled on CUDA only when its window is long enough to repay the
# compile (about a second per distinct graph); short windows run the generated code eagerly.
COMPILE_MIN_STEPS = 200
# How candidates' activations run: "program" (one op reads the graph from a buffer: the compiled
# model and the captured step serve every candidate), "code" (generated code behind a graph break,
# a step capture per new graph), or "auto": program where its kernels exist (CUDA with Triton).
ACTIVATION_MODE_ENV = "ALPHA_SYMBIO_ACTIVATIONS"


@torch.no_grad()
def effective_rank(weights: list[torch.Tensor]) -> float:
    """Mean over equally shaped matrices of exp(entropy of their normalised singular values).

    The singular values come from the eigenvalues of the float64 Gram matrices, in one batched
    call: four times faster than ``svdvals`` on an H200 (26 against 105 ms for the seed model's
    eight 1536×384 FFN matrices), and equal to it to 1e-6."""
    if not weights:
        return math.nan
    w = torch.stack(weights).double()
    gram = w.mT @ w if w.shape[-2] >= w.shape[-1] else w @ w.mT
    s = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    q = s / s.sum(-1, keepdim=True).clamp_min(1e-12)
    return float(torch.exp(-(q * q.clamp_min(1e-12).log()).sum(-1)).mean())


def attach_search(
    trainer: Trainer, symbio_config: dict[str, Any] | None, founders: list[Graph] | None = None
) -> Search:
    """Make the search a component of ``trainer`` (saved in checkpoints) and its driver."""
    config = from_wire(symbio_config)
    warnings = list(trainer.cfg.extra.get("symbio_warnings", []))
    search = Search(trainer, config, warnings=warnings, founders=founders)
    trainer.components["symbio"] = search
    trainer.driver = search.run
    return search


# --------------------------------------------------------------------------- fusion


class Fusion:
    """Pull the weights toward an EMA shadow of themselves after every optimizer step."""

    def __init__(self, params: list[torch.Tensor], ema: float, strength: float) -> None:
        self.params = params
        self.ema = ema
        self.strength = strength
        self.shadow: list[torch.Tensor] = []

    def reset(self) -> None:
        """The shadow starts from the current weights (copied into the last shadow's buffers)."""
        if len(self.shadow) == len(self.params):
            with torch.no_grad():
                torch._foreach_copy_(self.shadow, self.params)
        else:
            self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def __call__(self) -> None:
        torch._foreach_lerp_(self.shadow, self.params, self.ema)
        torch._foreach_lerp_(self.params, self.shadow, self.strength)


def base_graph(model_cfg: ModelConfig) -> Graph:
    """The graph of the model's starting activation."""
    act = model_cfg.ffn_activation
    if act == "composed" and model_cfg.activation_graph is not None:
        return from_json(model_cfg.activation_graph)
    if act == "relu2":
        return Mul(Basis("relu"), Basis("relu"))
    return Basis(act if act in ("gelu", "relu", "silu") else "gelu")


# --------------------------------------------------------------------------- the search


class Search:
    """``founders``: generation 0's graphs (default: the pool, or ``--symbio-resume-graph`` and
    mutations of it)."""

    def __init__(
        self,
        trainer: Trainer,
        config: SymbioConfig,
        *,
        warnings: list[str] | None = None,
        founders: list[Graph] | None = None,
    ) -> None:
        self.trainer = trainer
        self.config = config
        self.founders = founders
        self.warnings = warnings or []
        self.steps_per_candidate = plan_budget(config, trainer.cfg.iters).steps_per_candidate
        self.rng = random.Random(trainer.cfg.seed)
        self.namer = Namer(config.composed)
        self.controller = PopulationController.from_config(config)
        self.monitor = CusumMonitor(config.cusum_sensitivity, config.cusum_baseline_window)
        self.candidates: list[Candidate] = []
        self.population: list[Candidate] = []
        self.generation = 0  # index of the population to evaluate next
        self.history: list[dict[str, Any]] = []
        self.winner: Candidate | None = None
        self.finished = not config.searching
        self.search_steps = 0
        self.train_seconds = 0.0
        self._ranked_at = 0  # the step of the last effective_rank
        self._generation_end = False  # the records being emitted close a generation
        self.search_seconds = 0.0
        self.resumed = False
        self.mutation_rate = config.mutation_rate  # the rate that bred the current population
        self.current: Candidate | None = None
        self._best_loss = math.inf
        self._acts: list[GraphActivation] = []
        self._compiled_acts = True
        self._program_acts = False  # the activations read their graph from a program buffer
        self._rates_started = False  # a spread search has restarted the run's rate clocks
        self._start_graph = base_graph(trainer.model_cfg)
        # "base", "best", "scratch": buffers reused by every generation
        self._snapshots: dict[str, Snapshot] = {}
        self._fusion: Fusion | None = None
        if config.searching and config.fuse_weights_each_step:
            params = [p for p in trainer.model.parameters() if p.is_floating_point()]
            self._fusion = Fusion(params, config.fusion_shadow_ema, config.fusion_max_strength)
        trainer.step_hooks.append(self._on_step)

    # ------------------------------------------------------------------ public
    @property
    def winner_name(self) -> str | None:
        """The winner's formula (RunEnd's ``symbio_winner``)."""
        return self.winner.formula if self.winner is not None else None

    def run(self, trainer: Trainer) -> None:
        """The trainer's driver: runs the remaining generations, then installs the winner."""
        self._announce()
        if self.finished:
            return
        self._install()
        trainer.compile_evaluation()  # every candidate is evaluated
        if not self.population:
            room = (trainer.cfg.iters - trainer.step) // self.steps_per_candidate
            self.population = self._founding_population(min(self.config.population_size, room))
            self.candidates.extend(self.population)
        while not self.finished and not trainer.stopping:
            if trainer.ctx.world_size > 1:
                self._run_generation_spread()
            else:
                self._run_generation()

    def _founding_population(self, size: int) -> list[Candidate]:
        cfg, namer = self.config, self.namer
        activation = "composed" if cfg.composed else None
        if self.founders:
            return [
                namer.founder(i, 0, g, activation or getattr(g, "op", "composed"))
                for i, g in enumerate(self.founders[:size])
            ]
        text = self.trainer.cfg.symbio_resume_graph
        if text is None:
            return initial_population(cfg, namer, size)
        first = namer.founder(0, 0, resume_graph(cfg, text), "composed")
        first.mutation_applied = "resume"
        children = [
            mutate(first.graph, self.rng, cfg.basis_pool, cfg.max_graph_depth, cfg.max_graph_nodes)
            for _ in range(size - 1)
        ]
        return [first] + [namer.child(first, 0, child) for child in children]

    # ------------------------------------------------------------------ one generation
    def _run_generation(self) -> None:
        """One generation in this process: every candidate in turn (``_train_in_turn``), then the
        last candidate's records (with the winner's val loss when an eval is due) and the winner's
        state, restored from the best slot unless it is the live one."""
        t = self.trainer
        start, began = t.step, time.perf_counter()
        base = self._snapshot("base")
        base_rng = t.rng_state()
        population = self.population
        outcome = self._train_in_turn(list(range(len(population))), base, base_rng, start, spread=False)
        if outcome is None:  # stopped mid-generation
            self._rewind(base, base_rng, start)
            return
        best_k, best_rng = outcome
        best = population[best_k]
        eval_due = self._due(t.cfg.eval_interval, start)
        with self._closing_generation():
            t.flush(val_loss=best.val_loss if eval_due else None)  # the last candidate's records
        population[-1].best_loss = self._best_loss
        self._log_candidate(population[-1])
        if best_rng is not None:
            t.restore(self._snapshots["best"])
            t.set_rng_state(best_rng)
        self._adopt(population, best, start, began)

    def _train_in_turn(
        self,
        order: list[int],
        base: Snapshot,
        base_rng: dict[str, torch.Tensor],
        start: int,
        *,
        spread: bool,
    ) -> tuple[int, dict[str, torch.Tensor] | None] | None:
        """Train the candidates ``population[k]`` for k in ``order`` one after another, each from the
        generation's snapshot, and measure their val losses. Pipelined so that the device never
        waits for the host: candidate k's evaluation is queued behind its steps, and while it runs
        the host emits k's step records, queues a copy of k's state into the scratch slot and the
        next candidate's restore and activation; only then does it read k's val loss. A new best
        swaps the scratch and best slots (no copy).

        Returns the best k and, unless it is the last one trained (whose state is live), the RNG
        state that goes with the best slot; None when a stop cut a window short. ``spread``: this
        rank trains its share alone (``Trainer.local_steps``): candidates keep a one-process
        search's step numbers, every record is flushed, and the caller logs the candidates. Else
        the last candidate's records stay pending, for the generation's closing flush."""
        t, cfg, steps = self.trainer, self.config, self.steps_per_candidate
        population = self.population
        best_k: int | None = None
        best_rng: dict[str, torch.Tensor] | None = None
        self._load(population[order[0]], base, base_rng, restore=False)
        for j, k in enumerate(order):
            cand, last = population[k], j == len(order) - 1
            if spread:
                t.step = start + k * steps
            self._begin(cand)
            val_loss: list[torch.Tensor] = []
            trained_at = time.perf_counter()
            summary = self._train_window(cand, start, lambda v=val_loss: v.append(t.evaluate_on_device()))
            if not spread:  # a spread generation counts its ranks' common wall time instead
                self.train_seconds += time.perf_counter() - trained_at
            if summary.steps < steps:
                return None
            cand.steps, cand.tokens_per_sec = summary.steps, summary.tokens_per_sec
            if spread or not last:
                t.flush()  # k's records, while its evaluation runs
            if not last:
                self._snapshot("scratch")
                rng = t.rng_state()
                self._load(population[order[j + 1]], base, base_rng, restore=True)
            cand.val_loss = float(val_loss[0])
            cand.fitness = fitness(cand.val_loss, cand.graph, cfg)
            if spread or not last:
                cand.best_loss = self._best_loss
            if not spread and not last:
                self._log_candidate(cand)
            if best_k is None or rank_key(cand, cfg.rank_by) < rank_key(population[best_k], cfg.rank_by):
                best_k, best_rng = k, None
                if not last:
                    self._swap_best()
                    best_rng = rng
        assert best_k is not None
        return best_k, best_rng

    def _load(
        self, cand: Candidate, base: Snapshot, base_rng: dict[str, torch.Tensor], *, restore: bool
    ) -> None:
        """Queue ``cand``'s start: the generation's snapshot (unless the trainer still holds it),
        fresh moments if they are not carried, its activation and the fusion shadow."""
        t = self.trainer
        if restore:
            t.restore(base)
            t.set_rng_state(base_rng)
        if not self.config.carry_optimizer_state_across_candidates:
            _reset_moments(t.optimizer)
        self._set_graph(cand.graph)
        if self._fusion is not None:
            self._fusion.reset()

    def _train_window(
        self, cand: Candidate, start: int, enqueue_after: Callable[[], None] | None = None
    ) -> StepsSummary:
        """Train the loaded ``cand`` for one window on the generation's batches and learning rates;
        its records stay pending (``enqueue_after``: see ``Trainer.train_steps``)."""
        fields = self._step_fields(cand)
        return self.trainer.train_steps(
            self.steps_per_candidate,
            data_key=start,
            schedule_start=start,
            periodic=False,
            step_fields=lambda _step, f=fields: dict(f),
            after_step=self._fusion,
            defer_flush=True,
            enqueue_after=enqueue_after,
        )

    def _run_generation_spread(self) -> None:
        """One generation over several processes: rank r trains candidates r, r + N, ... alone
        (no all-reduce, the batches one process with this --batch would train on), every rank
        from the same snapshot; results and step records are all-gathered, every rank ranks them
        identically, and the winner's owner broadcasts its trained state. Step numbers are those
        of a one-process search (candidate k trains steps start + k·S + 1 ... start + (k+1)·S)."""
        t, cfg, steps = self.trainer, self.config, self.steps_per_candidate
        dist = torch.distributed
        rank, world = t.ctx.rank, t.ctx.world_size
        start, began = t.step, time.perf_counter()
        base = self._snapshot("base")
        base_rng = t.rng_state()
        population = self.population
        mine = list(range(rank, len(population), world))  # may be empty: more ranks than candidates
        stopped = False
        with t.local_steps() as recorder:
            if mine:
                outcome = self._train_in_turn(mine, base, base_rng, start, spread=True)
                stopped = outcome is None
                if outcome is not None and outcome[1] is not None:
                    t.restore(self._snapshots["best"])  # this rank's best, in case it is the winner
                    t.set_rng_state(outcome[1])
        results = {
            k: {
                "val": population[k].val_loss,
                "tps": population[k].tokens_per_sec,
                "best": population[k].best_loss,
            }
            for k in ([] if stopped else mine)
        }
        flag = torch.tensor([1.0 if stopped else 0.0], device=t.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (results, recorder.events))
        records = [e for _, events in gathered for e in events]
        # the ranks trained at once: the generation's training time is their common wall time
        trained = time.perf_counter() - began
        self.train_seconds += trained
        if flag.item() > 0:  # some rank was stopped: the generation restarts on resume
            t.replay(records)
            self._rewind(base, base_rng, start)
            return
        for rank_results, _ in gathered:
            for k, r in rank_results.items():
                cand = population[k]
                cand.steps, cand.val_loss = steps, r["val"]
                cand.tokens_per_sec, cand.best_loss = r["tps"], r["best"]
                cand.fitness = fitness(cand.val_loss, cand.graph, cfg)
        best = min(population, key=lambda c: rank_key(c, cfg.rank_by))  # ties: the earlier one
        owner = population.index(best) % world
        t.broadcast_state(owner)
        rng = [t.rng_state() if rank == owner else None]
        dist.broadcast_object_list(rng, src=owner)
        t.set_rng_state(rng[0])
        t.step = start + len(population) * steps
        eval_due = self._due(t.cfg.eval_interval, start)
        last = max((e for e in records if isinstance(e, Step)), key=lambda e: e.step, default=None)
        if eval_due and last is not None:
            last.metrics["valLoss"] = best.val_loss
        with self._closing_generation():
            t.replay(records)
        if eval_due:
            t.record_eval(best.val_loss)
        for cand in population:
            self._log_candidate(cand)
        self._adopt(population, best, start, began)
        if self._rates_started:
            t.count_step_time(trained, sum(isinstance(e, Step) for e in records) * t.tokens_per_step // world)
        else:  # every rank is past its compilation only now
            t.restart_rate_clocks()
            self._rates_started = True

    def _adopt(self, population: list[Candidate], best: Candidate, start: int, began: float) -> None:
        """The winner's state is in place: install its graph, then close the generation."""
        self._activate(best)
        if self.winner is not None:
            self.winner.alive = False
        self.winner = best
        self.search_steps += self.steps_per_candidate * len(population)
        self._close_generation(population, best, start, began)

    def _close_generation(
        self, population: list[Candidate], best: Candidate, start: int, began: float
    ) -> None:
        t, cfg = self.trainer, self.config
        previous = self.history[-1]["bestValLoss"] if self.history else None
        seconds = time.perf_counter() - began
        self.search_seconds += seconds
        self.history.append(
            {
                "generation": self.generation,
                "population": len(population),
                "mutationRate": self.mutation_rate,
                "winnerId": best.id,
                "winnerName": best.name,
                "winnerFormula": best.formula,
                "bestValLoss": best.val_loss if math.isfinite(best.val_loss) else None,
                "step": t.step,
                "seconds": round(seconds, 3),
            }
        )
        for cand in population:
            cand.alive = cand is best  # the state the run continues from
        if previous is not None and self.controller.observe(previous, best.val_loss, t.step):
            self._say(
                f"population dynamics → pop={self.controller.size} (scale={self.controller.scale:.2f}) "
                f"mut={self.controller.mutation_rate:.3f} | {self.controller.last_reason}"
            )
        t.bus.emit(
            SymbioGeneration(
                step=t.step,
                generation=self.generation,
                candidates=[c.to_record() for c in population],
                winner=best.to_record(),
                best_val_loss=best.val_loss,
            )
        )
        self.generation += 1
        size = min(self.controller.size, (t.cfg.iters - t.step) // self.steps_per_candidate)
        if self.generation >= cfg.generations or size < 2:
            self._finish()
        else:
            self.mutation_rate = self.controller.mutation_rate
            ranked = rank(population, cfg.rank_by)
            parents = select_parents(
                ranked, math.ceil(size / 2), cfg.selection_strategy, cfg.tournament_k, self.rng
            )
            self.population = breed(
                parents, size, self.mutation_rate, self.generation, cfg, self.namer, self.rng
            )
            self.candidates.extend(self.population)
        self._write_artifacts()
        self._periodic(start)

    def _finish(self) -> None:
        """The search is over: the winner's graph (already installed) trains for the rest."""
        self.finished = True
        self._snapshots.clear()
        self.population = []
        self.current = None
        self.monitor.switch()  # the winner's own speed and gradient scale from here on
        for act in self._acts:
            act.swappable = False  # a compiled model may now inline and fuse the winner
        self.trainer.compile_evaluation(False)  # evals are rare again: no second compilation
        w = self.winner
        if w is None:
            return
        if self.trainer.graphed is not None:  # capture the fused step once, for the rest of the run
            self.trainer.graphed.invalidate(f"final:{dumps(w.graph)}")
        w.alive = True
        report = Path(self.trainer.ctx.run_dir) / REPORT_FILE
        overhead = self.search_seconds - self.train_seconds
        self._say(
            "\n".join(
                [
                    "── symbio search complete ──",
                    f"winner: {w.formula} ({w.id}) | bestVal={_fmt(w.val_loss)} | fitness={_fmt(w.fitness)}",
                    f"search: {self.generation} generations, {len(self.candidates)} candidates, "
                    f"{self.search_steps:,} steps; {self.train_seconds:.1f}s training, "
                    f"{overhead:.1f}s selection overhead (evals, snapshots)",
                    f"report: {report}",
                ]
            )
        )

    def _snapshot(self, slot: str) -> Snapshot:
        """The trainer's state, copied into this slot's buffers (allocated by the first use)."""
        snap = self.trainer.snapshot(into=self._snapshots.get(slot))
        self._snapshots[slot] = snap
        return snap

    def _swap_best(self) -> None:
        """The scratch slot holds the new best state: it becomes the best slot, the old best slot
        the scratch one."""
        slots = self._snapshots
        scratch = slots.pop("scratch")
        if "best" in slots:
            slots["scratch"] = slots["best"]
        slots["best"] = scratch

    def _rewind(self, base: Snapshot, base_rng: dict[str, torch.Tensor], start: int) -> None:
        """A stop mid-generation: back to the generation's snapshot and step, so the checkpoint
        written now resumes this generation from its start."""
        t = self.trainer
        t.restore(base)
        t.set_rng_state(base_rng)
        t.step, t.tokens_seen = start, base.tokens_seen
        for cand in self.population:
            cand.steps, cand.val_loss, cand.fitness, cand.best_loss = 0, math.nan, math.nan, math.inf
            cand.tokens_per_sec = math.nan
        self._set_graph(self.winner.graph if self.winner is not None else self._start_graph)
        self._say(f"stopped during generation {self.generation}: rewound to its start (step {start})")

    # ------------------------------------------------------------------ helpers
    def _install(self) -> None:
        """Give every block a swappable graph activation, once; later swaps change graphs only."""
        if self._acts:
            return
        on_cuda = self.trainer.device.type == "cuda"
        compile_act = None if on_cuda and self.steps_per_candidate >= COMPILE_MIN_STEPS else False
        self._compiled_acts = compile_act is None
        capacity = self._program_capacity()
        self._program_acts = capacity is not None

        def factory() -> GraphActivation:
            act = GraphActivation(
                self._start_graph, swappable=True, compile=compile_act, program_capacity=capacity
            )
            self._acts.append(act)
            return act

        self.trainer.set_activation(factory, dumps(self._start_graph))

    def _program_capacity(self) -> int | None:
        """Instructions for the candidates' programs, or None to run them as code."""
        mode = os.environ.get(ACTIVATION_MODE_ENV, "auto")
        if mode not in ("auto", "program", "code"):
            raise ConfigError(f"{ACTIVATION_MODE_ENV}={mode!r}: expected auto, program or code")
        if mode == "code" or (mode == "auto" and not kernels_available(self.trainer.device)):
            return None
        cfg = self.config
        program = encode(self._start_graph)
        if max(cfg.max_graph_depth, stack_depth(program)) > STACK_SLOTS:
            return None  # deeper than the kernels' stack (a postfix program needs one slot a level)
        return max(cfg.max_graph_nodes, len(program))

    def _set_graph(self, graph: Graph) -> None:
        """Swap the graph in place: a compiled model is not retraced. With programs the captured
        CUDA step graph reads the new program from its buffer; with code the step is re-captured
        for a new graph's key (the activation sits behind a graph break)."""
        program = self._host_program(graph)
        for act in self._acts:
            act.set_graph(graph, program)
        if self.trainer.graphed is not None and not self._program_acts:
            # an eager activation compiles nothing: its step graph is captured without warm-up
            self.trainer.graphed.invalidate(dumps(graph), warmup=self._compiled_acts)
        mc = self.trainer.model_cfg
        if self.config.composed or not isinstance(graph, Basis):
            mc.ffn_activation, mc.activation_graph = "composed", to_json(graph)
        else:
            mc.ffn_activation, mc.activation_graph = graph.op, None

    def _host_program(self, graph: Graph) -> torch.Tensor | None:
        """``graph``'s program buffer for every block, built once, in pinned memory on CUDA (the
        copies to the blocks then queue without waiting for the device)."""
        if not self._program_acts or not self._acts:
            return None
        program = program_tensor(graph, capacity_of(self._acts[0].program))
        return program.pin_memory() if self.trainer.device.type == "cuda" else program

    def _activate(self, cand: Candidate) -> None:
        """``cand``'s graph in every block, and the run's current candidate."""
        self._set_graph(cand.graph)
        self._begin(cand, announce=False)

    def _begin(self, cand: Candidate, *, announce: bool = True) -> None:
        """``cand`` (its activation already loaded) is the candidate whose steps come next."""
        self.current = cand
        self._best_loss = math.inf
        self.monitor.switch()
        if announce:
            params = self.trainer.model.num_params()
            self._say(
                f"→ gen={cand.generation} candidate={cand.name} ({cand.id}) activation={cand.formula} "
                f"params={params:,} pop={len(self.population)} mut={self.mutation_rate:.3f}",
                level="debug",
            )

    def _log_candidate(self, cand: Candidate) -> None:
        self._say(
            f"candidate {cand.name} done: bestLoss={_fmt(cand.best_loss)} bestVal={_fmt(cand.val_loss)} "
            f"fitness={_fmt(cand.fitness)} | {cand.tokens_per_sec:,.0f} tok/s",
            level="debug",
        )

    def _step_fields(self, cand: Candidate) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "symbio_candidate_id": cand.id,
            "symbio_candidate_name": cand.name,
            "symbio_candidate_activation": cand.formula if self.config.composed else cand.activation,
            "symbio_candidate_parent_id": cand.parent_id,
            "symbio_candidate_parent_name": cand.parent_name,
            "symbio_generation": cand.generation,
            "symbio_activation_graph": dumps(cand.graph) if self.config.composed else None,
        }
        if cand.mutation_applied is not None:
            fields["symbio_mutation_applied"] = cand.mutation_applied
        if self.config.track_population_metrics and self.population:
            distinct = len({dumps(c.graph) for c in self.population})
            fields["architecture_diversity"] = distinct / len(self.population)
        return fields

    def _due(self, interval: int | None, start: int) -> bool:
        """Did a multiple of ``interval`` fall in (start, step], or is this the last step?"""
        step = self.trainer.step
        if step >= self.trainer.cfg.iters:
            return True
        return bool(interval) and step // interval > start // interval  # type: ignore[operator]

    def _periodic(self, start: int) -> None:
        """Samples and checkpoints whose interval came due during the generation."""
        t = self.trainer
        if t.cfg.sample_interval > 0 and self._due(t.cfg.sample_interval, start) and t.ctx.is_main:
            t.sample()
        if self._due(t.cfg.checkpoint_interval, start):
            t.save_checkpoint()

    def _on_step(self, metrics: dict[str, Any]) -> None:
        """Step hook (every step of the run): candidate best loss, CUSUM fields and alerts."""
        loss = metrics.get("loss")
        if self.current is not None and not self.finished and loss is not None and math.isfinite(loss):
            self._best_loss = min(self._best_loss, loss)
        val = metrics.get("valLoss")
        if val is not None:
            self.monitor.update_val(val)
        clip = metrics.get("clip_coef")
        reading = self.monitor.update(
            metrics.get("gradNorm"), clip is not None and clip < 1.0, metrics.get("tokens_per_sec")
        )
        metrics.update(reading.fields())
        if reading.alerts:
            self.trainer.bus.emit(
                Alert(
                    step=metrics["step"],
                    kind="symbio_cusum_alert",
                    level="warn",
                    text="CUSUM alert: " + "; ".join(reading.reasons),
                    data={**reading.values, "alerts": reading.alerts},
                )
            )
        if self.config.track_effective_rank and self._rank_due(metrics["step"]):
            metrics["effective_rank"] = self._effective_rank()
            self._ranked_at = metrics["step"]

    def _rank_due(self, step: int) -> bool:
        """Whether this step record gets an ``effective_rank``. It is measured on the weights of the
        step it describes, so only the newest step of a flush qualifies, once a ``metricsInterval``
        boundary has passed since the last one. During the search only a generation's last step
        does: one measurement costs about as much as six steps of the seed model on an H200, a
        fifth of a 25-step candidate window if it were taken per candidate."""
        interval = self.config.metrics_interval
        if step != self.trainer.step or step // interval <= self._ranked_at // interval:
            return False
        searching = self.current is not None and not self.finished
        return not searching or self._generation_end

    @contextlib.contextmanager
    def _closing_generation(self) -> Iterator[None]:
        self._generation_end = True
        try:
            yield
        finally:
            self._generation_end = False

    def _effective_rank(self) -> float:
        model = self.trainer.model
        return effective_rank([p for name, p in model.named_parameters() if name.endswith("mlp.fc1.weight")])

    def _say(self, text: str, level: str = "info") -> None:
        self.trainer.bus.emit(Alert(step=self.trainer.step, kind="symbio", level=level, text=text))

    def _announce(self) -> None:
        cfg, t = self.config, self.trainer
        for warning in self.warnings:
            t.bus.emit(Alert(step=t.step, kind="symbio_config", level="warn", text=warning))
        self.warnings = []
        lines = [
            f"enabled | activation={t.model_cfg.ffn_activation} | cusum_sens={cfg.cusum_sensitivity:g} "
            f"| metrics_interval={cfg.metrics_interval}"
        ]
        if cfg.population_adaptation:
            lines.append(
                f"population_adaptation=ON scale=[{cfg.population_scale_min:g},{cfg.population_scale_max:g}] "
                f"step={cfg.population_scale_step:g} cooldown={cfg.population_adaptation_cooldown}"
            )
        lines.append(
            "continuity=fork-and-compare "
            f"carry_optim={str(cfg.carry_optimizer_state_across_candidates).lower()} constant_ffn_dim=true"
        )
        if self._fusion is not None:
            lines.append(f"fusion=ON shadow_ema={cfg.fusion_shadow_ema:g} alpha={cfg.fusion_max_strength:g}")
        if cfg.searching:
            budget = plan_budget(cfg, t.cfg.iters)
            lines.append(
                f"search: mode={cfg.search_mode} | base={cfg.population_size} candidates × "
                f"{self.steps_per_candidate} steps × {cfg.generations} gens "
                f"≈ {budget.nominal_steps:,} total steps"
            )
        if self.resumed:
            state = "finished" if self.finished else f"at generation {self.generation}"
            lines.append(f"resumed {state} ({len(self.candidates)} candidates so far)")
        self._say("\n".join(lines) if len(lines) > 1 else lines[0])

    def _write_artifacts(self) -> None:
        if not self.trainer.ctx.is_main:
            return
        wire = self.config.to_wire()
        wire["stepsPerCandidate"] = self.steps_per_candidate
        state = SearchState(
            candidates=[c.to_record() for c in self.candidates],
            winner_id=self.winner.id if self.winner else None,
            generation=max(0, self.generation - 1),
            config=wire,
            rank_by=self.config.rank_by,
            strategy=self.config.search_strategy,
            finished=self.finished,
            search_steps=self.search_steps,
            history=self.history,
            timing={
                "trainSeconds": round(self.train_seconds, 3),
                "searchSeconds": round(self.search_seconds, 3),
            },
        )
        write_artifacts(self.trainer.ctx.run_dir, state)

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {
            "version": STATE_VERSION,
            "generation": self.generation,
            "finished": self.finished,
            "stepsPerCandidate": self.steps_per_candidate,
            "mutationRate": self.mutation_rate,
            "candidates": [c.to_record() for c in self.candidates],
            "population": [c.id for c in self.population],
            "winnerId": self.winner.id if self.winner else None,
            "history": self.history,
            "searchSteps": self.search_steps,
            "trainSeconds": self.train_seconds,
            "searchSeconds": self.search_seconds,
            "namer": self.namer.counter,
            "rng": [version, list(internal), gauss],
            "controller": self.controller.state_dict(),
            "monitor": self.monitor.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ConfigError(f"checkpoint holds symbio search state version {state.get('version')!r}")
        self.candidates = [Candidate.from_record(r) for r in state["candidates"]]
        by_id = {c.id: c for c in self.candidates}
        self.population = [by_id[i] for i in state["population"]]
        self.winner = by_id.get(state["winnerId"]) if state["winnerId"] else None
        self.generation = int(state["generation"])
        self.finished = bool(state["finished"])
        self.steps_per_candidate = int(state["stepsPerCandidate"])
        self.mutation_rate = float(state["mutationRate"])
        self.history = list(state["history"])
        self.search_steps = int(state["searchSteps"])
        self.train_seconds = float(state["trainSeconds"])
        self.search_seconds = float(state["searchSeconds"])
        self.namer.counter = int(state["namer"])
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.controller.load_state_dict(state["controller"])
        self.monitor.load_state_dict(state["monitor"])
        if self.winner is not None:
            self._start_graph = self.winner.graph
        self.resumed = True


@torch.no_grad()
def _reset_moments(optimizer: torch.optim.Optimizer) -> None:
    """Fresh AdamW state (moments and step count), zeroed in place so that tensors a captured
    CUDA graph points at stay the same."""
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                value.zero_()


def _fmt(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "N/A"
