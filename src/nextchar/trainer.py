"""The training loop of one run, reading top to bottom in `Trainer._fit`; DDP aware.

One step = one window of the contiguous streams (see data.py): forward with the carried hidden
state, summed cross-entropy over the window's valid targets divided by their global count,
backward, clip, optimizer step. Only rank 0 logs, evaluates, samples and writes files. Beside the
loop: cadence.py (when to stop, evaluate, save), guard.py (non-finite steps), logwindow.py (the
log line and the progress bar), signals.py (Ctrl-C), optimizer.py, checkpoint.py (what a resume
point holds); launch.py sets a run up.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint, distributed
from .averaging import WeightAverage
from .cadence import Cadence
from .checkpoint import LoopState, ResumePoint, vocab_digest
from .config import RunConfig, SampleConfig
from .data import IGNORE, Streams, TokenData
from .devices import autocast, resolve_device
from .errors import Diverged, Interrupted, PeerFailure, UserError
from .evaluate import EvalResult, score_ids
from .guard import NonFiniteGuard, Ok, carry, taken
from .logwindow import LogWindow, ProgressBar
from .model import CharRNN
from .optimizer import build_optimizer, defers_checks, set_weight_decay
from .runfolder import BEST, LATEST, EvalRecord, FinalRecord, RunFolder, SkippedRecord, TrainRecord
from .sample import Sampler
from .schedule import lr_factor
from .signals import StopSignals


@dataclass
class TrainResult:
    folder: Path
    steps: int
    elapsed: float  # seconds of wall clock, over all sessions of the run
    chars_seen: int
    best_val: EvalResult | None
    test: EvalResult | None
    stop_reason: str
    sample: str


class Trainer:
    """The training loop of one run: `fit` trains until the run's stopping point and returns a
    TrainResult; a signal saves a resume point and raises Interrupted.

    It owns the model twice over: `raw_model` is the bare CharRNN (its weights are what is saved,
    averaged and evaluated), `model` is what a step calls (DDP around it with several processes,
    torch.compile with --compile; the same object otherwise). It also owns the optimizer, the weight
    average, the hidden state carried between windows, and `loop`, the counters a resume restores.
    `precision` and `eval_precision` are resolved ones (fp32 or bf16), as launch.py chose them."""

    def __init__(
        self,
        config: RunConfig,
        data: TokenData,
        folder: RunFolder,
        *,
        precision: str,
        eval_precision: str,
        resume: bool = False,
        quiet: bool = False,
        log: TextIO | None = None,
        dist: distributed.Dist | None = None,
    ):
        self.config, self.data, self.folder, self.quiet = config, data, folder, quiet
        self.log = log if log is not None else sys.stderr
        tc = config.train
        device = resolve_device(tc.device)
        self.dist = dist if dist is not None else distributed.setup(device.type)
        self.device = (
            torch.device("cuda", self.dist.local_rank) if device.type == "cuda" else device
        )
        self.precision, self.eval_precision = precision, eval_precision
        torch.manual_seed(tc.seed)
        self.raw_model = CharRNN(config.model).to(self.device)
        self.params = list(self.raw_model.parameters())
        self.nonfinite = NonFiniteGuard(self.device, defers_checks(self.device), tc.max_bad_steps)
        self.optimizer = build_optimizer(self.raw_model, tc, fused=self.nonfinite.defer)
        self.average = (
            WeightAverage(self.raw_model, tc.average, tc.average_decay)
            if tc.average != "none"
            else None
        )
        self.model = self._wrap(self.raw_model)
        self.streams = Streams(
            data.split("train"), tc.batch_size, tc.seq_len, rows=self.dist.rows(tc.batch_size)
        )
        val = data.split("val")
        self.val_ids = val[: tc.eval_chars] if tc.eval_chars else val
        self.cadence = Cadence.plan(tc, len(self.streams))
        self.loop = LoopState()
        self.hidden = None
        self.signals = StopSignals(self.dist.active)
        self.last_sample = ""
        self.bar = ProgressBar(self.log, show=False, by_steps=False, total=0, initial=0)
        if resume:
            self._restore()
        if not math.isfinite(self.loop.next_eval_time):  # a new run, or one that had no --time
            self.loop.next_eval_time = self.cadence.eval_interval()

    def _wrap(self, raw_model: CharRNN) -> torch.nn.Module:
        """What a step calls: DDP around the model with several processes, compiled with --compile."""
        model = raw_model
        if self.dist.active:
            with self.dist.guard("the start of data-parallel training"):
                model = torch.nn.parallel.DistributedDataParallel(
                    raw_model,
                    device_ids=[self.dist.local_rank] if self.device.type == "cuda" else None,
                )
        return torch.compile(model) if self.config.train.compile else model

    # ---- resume points and the best weights ----------------------------------------------

    def _check_weights(self) -> None:
        """Every rank, before weights are evaluated or saved: non-finite ones never replace good ones."""
        if not all(bool(torch.isfinite(p).all()) for p in self.raw_model.parameters()):
            raise self._diverged(f"the weights became non-finite by step {self.loop.step}")

    def _diverged(self, why: str) -> Diverged:
        return Diverged(
            f"training diverged: {why}; the last good checkpoint is kept in "
            f"{self.folder.path}; resume with a lower learning rate, e.g. nextchar train "
            f"--resume {self.folder.path} --lr {self.config.train.lr / 3:.2g}"
        )

    def _weights_in_use(self) -> CharRNN:
        """What evaluation, best.safetensors and the previews use: the average once it has begun,
        the trained weights before that (or without averaging)."""
        if self.average is not None and self.average.count:
            return self.average.module
        return self.raw_model

    def _hidden_rows(self) -> tuple[torch.Tensor, ...]:
        """The carried state with every rank's rows, (h,) or (h, c); () when there is none."""
        if self.hidden is None:
            return ()
        parts = self.hidden if isinstance(self.hidden, tuple) else (self.hidden,)
        return tuple(self.dist.gather_rows(t) for t in parts)

    def _save_latest(self, elapsed: float) -> None:
        self._check_weights()
        hidden = self._hidden_rows()  # collective: every rank takes part
        if not self.dist.is_main:
            return
        started = time.perf_counter()
        self.loop.elapsed = elapsed
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        average = self.average.tensors() if self.average is not None else {}
        checkpoint.save_resume(
            self.folder.file(LATEST),
            ResumePoint(
                model=self.raw_model.state_dict(),
                optimizer=self.optimizer.state_dict(),
                loop=self.loop,
                rng_cpu=torch.get_rng_state(),
                rng_cuda=cuda_rng,
                hidden=hidden,
                average=average,
                **self._averaged(),
                world_size=self.dist.world,
                batch_size=self.config.train.batch_size,
                vocab=vocab_digest(self.data.vocab),
            ),
        )
        self.cadence.save_cost = time.perf_counter() - started

    def _save_best(self, result: EvalResult) -> None:
        checkpoint.save_weights(
            self.folder.file(BEST),
            self._weights_in_use().state_dict(),
            step=self.loop.step,
            val=result,
            vocab=vocab_digest(self.data.vocab),
            **self._averaged(),
        )

    def _averaged(self) -> dict[str, Any]:
        """How the weights are averaged, as a checkpoint records it."""
        if self.average is None:
            return {}
        return {"average_kind": self.average.kind, "average_count": self.average.count}

    def _restore(self) -> None:
        point = checkpoint.load_resume(
            self.folder.file(LATEST),
            vocab=vocab_digest(self.data.vocab),
            batch_size=self.config.train.batch_size,
        )
        try:
            self.raw_model.load_state_dict(point.model)
            self.optimizer.load_state_dict(point.optimizer)
            if self.average is not None and point.average_kind == self.average.kind:
                self.average.load(point.average, point.average_count)
            # else: averaging turned on (or changed) by this resume starts afresh
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserError(
                f"{self.folder.file(LATEST)} does not match this run's model ({exc})"
            ) from None
        set_weight_decay(self.optimizer, self.config.train.weight_decay)  # --lr is set each step
        self.loop = point.loop
        if point.hidden:
            rows = self.dist.rows(self.config.train.batch_size)
            parts = tuple(t[:, rows].to(self.device) for t in point.hidden)
            self.hidden = parts if len(parts) == 2 else parts[0]
        torch.set_rng_state(point.rng_cpu)
        if self.device.type == "cuda" and point.rng_cuda is not None:
            torch.cuda.set_rng_state(point.rng_cuda, self.device)
        if (
            self.dist.is_main
        ):  # what was logged after this point belongs to a future that did not happen
            self.folder.truncate_metrics(self.loop.step)

    # ---- evaluation ----------------------------------------------------------------------

    def _say(self, text: str) -> None:
        if not self.quiet and self.dist.is_main:
            self.bar.say(text)

    def _evaluate(self, elapsed: float) -> EvalResult | None:
        """Rank 0: score the validation text, keep the best weights, draw a preview, log them."""
        started = time.perf_counter()
        result = None
        if len(self.val_ids) >= 2:
            result = score_ids(
                self._weights_in_use(),
                self.val_ids,
                device=self.device,
                precision=self.eval_precision,
            )
            self.raw_model.train()
            if result.nats_per_char < self.loop.best_val:
                self.loop.best_val, self.loop.best_result = result.nats_per_char, result
                self._save_best(result)
        else:  # no validation text: the latest weights are the best we know
            self._save_best(EvalResult(0, math.nan, math.nan, math.nan, math.nan))
        sample = ""
        if self.config.train.sample_chars > 0:  # a preview, in the fastest format here
            sample = Sampler(self._weights_in_use(), self.data.vocab).generate(
                SampleConfig(
                    length=self.config.train.sample_chars,
                    temperature=0.8,
                    seed=self.config.train.seed + self.loop.step,
                )
            )[0]
            self.raw_model.train()
        self.last_sample = sample
        self.cadence.eval_cost = time.perf_counter() - started
        if result:
            self._say(
                f"step {self.loop.step:>6} | val {result.nats_per_char:.4f} nats/char, "
                f"{result.bits_per_char:.4f} bits/char | {elapsed:.0f}s"
            )
        if sample:
            self._say("  sample: " + sample.replace("\n", "\n          "))
        self.folder.append_metrics(
            EvalRecord.of(
                self.loop.step,
                self.loop.chars_seen,
                round(elapsed, 3),
                sample,
                result,
                averaged_steps=self.average.count if self.average is not None else None,
            )
        )
        return result

    def _evaluate_and_save(self, elapsed: float, clock0: float) -> None:
        """Every rank: an evaluation (rank 0 scores) and a resume point after it."""
        self._check_weights()
        if self.dist.is_main:
            self._evaluate(elapsed)
        self.loop.last_eval_step = self.loop.step
        self.loop.next_eval_time = self.cadence.next_eval_after(self.loop.next_eval_time, elapsed)
        self._save_latest(time.perf_counter() - clock0)

    def _test_score(self) -> EvalResult | None:
        """Rank 0, at the end: the test text scored with the best weights."""
        test_ids = self.data.split("test")
        test_ids = (
            test_ids[: self.config.train.eval_chars] if self.config.train.eval_chars else test_ids
        )
        if len(test_ids) < 2 or not self.folder.file(BEST).exists():
            return None
        best, _ = checkpoint.read_weights(self.folder.file(BEST))
        scorer = checkpoint.build_model(best, self.config.model).to(self.device)
        return score_ids(scorer, test_ids, device=self.device, precision=self.eval_precision)

    def fit(self) -> TrainResult:
        with self.signals:  # restored last: see the comment below
            try:
                return self._fit()
            except PeerFailure as exc:
                raise PeerFailure(
                    f"{exc}. The last checkpoint in {self.folder.path} is intact: run "
                    f"the same torchrun command with nextchar train --resume "
                    f"{self.folder.path}"
                ) from exc.__cause__
            finally:  # leave the group first: torchrun passes a Ctrl-C on again, and one arriving
                self.dist.close()  # while a rank waits at the closing barrier must only be recorded

    def _interrupted(self, signum: int, elapsed: float) -> None:
        self._save_latest(elapsed)
        raise Interrupted(
            f"{signal.Signals(signum).name} received: stopped at step {self.loop.step} "
            f"and saved a resumable checkpoint; continue with: nextchar train --resume "
            f"{self.folder.path}",
            signum,
        )

    # ---- the loop ------------------------------------------------------------------------

    def _fit(self) -> TrainResult:
        tc, cadence = self.config.train, self.cadence
        self.model.train()
        self._say_start()
        self.bar = ProgressBar(
            self.log,
            show=not self.quiet and self.dist.is_main,
            by_steps=cadence.by_steps,
            total=cadence.total_steps if cadence.by_steps else cadence.budget,
            initial=self.loop.step if cadence.by_steps else self.loop.elapsed,
        )
        clock0 = time.perf_counter() - self.loop.elapsed
        last_save = time.perf_counter()
        logged = LogWindow(self.device if self.nonfinite.defer else "cpu", time.perf_counter())
        while True:
            elapsed = time.perf_counter() - clock0
            # ---- agree on every rank: a signal, the stopping point, evaluating or saving by the clock
            signum, time_up, steps_done, save_by_clock, eval_by_clock = self.dist.any_flags(
                [
                    int(self.signals.received),
                    int(cadence.time_up(elapsed)),
                    int(cadence.steps_done(self.loop.step)),
                    int(
                        cadence.save_by_clock(time.perf_counter() - last_save) and self.dist.is_main
                    ),
                    int(
                        cadence.eval_by_clock(elapsed, self.loop.next_eval_time)
                        and self.dist.is_main
                    ),
                ]
            )
            if signum:
                self._interrupted(signum, elapsed)
            if time_up or steps_done:
                stop_reason = "time" if time_up else "steps"
                break
            # ---- evaluate (and save), or only save
            step = self.loop.step
            if (eval_by_clock or cadence.eval_by_steps(step)) and step != self.loop.last_eval_step:
                self._evaluate_and_save(elapsed, clock0)
                last_save = time.perf_counter()
            elif save_by_clock or cadence.save_by_steps(step):
                self._save_latest(elapsed)
                last_save = time.perf_counter()
            # ---- a single training step, skipped if its loss or a gradient is not finite
            lr = tc.lr * lr_factor(
                step,
                cadence.progress(step, elapsed),
                tc.warmup_steps,
                tc.schedule,
                tc.final_lr_frac,
            )
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss_sum, ok, local_valid, valid = self._step(elapsed)
            logged.add(loss_sum, ok, local_valid, valid)
            # ---- the divergence guard's counts, and the log line
            if self.nonfinite.due(self.loop.step, tc.log_every):
                self._read_skips()
            if self.loop.step % tc.log_every == 0:
                self._log_line(logged, lr, clock0)
            self.bar.advance(time.perf_counter() - clock0)
        return self._finish(stop_reason, clock0)

    def _say_start(self) -> None:
        if self.loop.step == 0:
            m, world = self.config.model, self.dist.world
            self._say(
                f"training {m.cell} {m.layers}x{m.hidden} ({self.raw_model.num_parameters():,} "
                f"parameters) on {len(self.data.split('train')):,} chars, vocab {m.vocab_size}, "
                f"device {self.device}, {world} process{'es' if world > 1 else ''}"
            )

    def _step(self, elapsed: float) -> tuple[torch.Tensor, Ok, int, int]:
        """One window of every stream: forward with the carried state, backward, clip, and the
        optimizer step unless the loss or a gradient was not finite -> (this rank's summed loss,
        ok: whether the step was taken (see guard.py), this rank's targets, all ranks')."""
        window = self.loop.step % len(self.streams)
        if window == 0:
            self.hidden = None  # each epoch starts its streams afresh
        x, y, valid = self.streams.window(window)
        local_valid = int((y != IGNORE).sum())  # this rank's share of the global `valid`
        x, y = self._to_device(x), self._to_device(y)
        with autocast(self.precision, self.device):  # bf16 autocast, or nothing; weights stay fp32
            logits, hidden = self.model(x, self.hidden)  # (B, T, V)
            loss_sum = F.cross_entropy(
                logits.reshape(-1, self.config.model.vocab_size).float(),
                y.reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            )
        # DDP averages gradients over ranks: x world / global count = the one-process gradient.
        # A non-finite loss on any rank makes its gradient NaN, which the all-reduce hands to
        # every rank, so `finite` below (from the reduced gradient) is the same on all ranks.
        scale = torch.where(torch.isfinite(loss_sum.detach()), self.dist.world / valid, math.nan)
        loss = loss_sum * scale
        self.optimizer.zero_grad(set_to_none=True)
        with self.dist.guard("the gradient all-reduce"):
            loss.backward()
        finite = torch.isfinite(self._clip())  # NaN if the loss or any gradient was not finite
        self.loop.step += 1
        self.loop.chars_seen += valid
        ok = self.nonfinite.step(self.optimizer, finite)  # False, or on the device (see guard.py)
        progress = self.cadence.progress(self.loop.step, elapsed)
        if taken(ok) and self.average is not None and progress >= self.config.train.average_start:
            self.average.update(self.raw_model)
        self.hidden = carry(hidden, ok)
        return loss_sum, ok, local_valid, valid

    def _clip(self) -> torch.Tensor:
        """Clip the gradients to --grad-clip (0: not at all) -> their norm before clipping."""
        if self.config.train.grad_clip > 0:
            return torch.nn.utils.clip_grad_norm_(self.params, self.config.train.grad_clip)
        return torch.linalg.vector_norm(
            torch.stack(
                [torch.linalg.vector_norm(p.grad) for p in self.params if p.grad is not None]
            )
        )

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":  # from pinned memory the copy does not block the host
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def _read_skips(self) -> None:
        """Log the steps the guard skipped since its last read; too many in a row end the run."""
        skipped, longest = self.nonfinite.read()
        if skipped:
            if self.dist.is_main:
                self.folder.append_metrics(SkippedRecord(self.loop.step, skipped))
            self._say(
                f"step {self.loop.step}: skipped {skipped} step(s) with a non-finite loss or "
                f"gradient"
            )
        if self.nonfinite.diverged(longest):
            raise self._diverged(f"{longest} non-finite steps in a row at step {self.loop.step}")

    def _log_line(self, logged: LogWindow, lr: float, clock0: float) -> None:
        """Every rank (the sums are collective): the train record of the log window, and the bar."""
        train_loss, speed, now = logged.close(self.dist, time.perf_counter)
        if self.dist.is_main:
            self.folder.append_metrics(
                TrainRecord(
                    self.loop.step,
                    self.loop.chars_seen,
                    round(now - clock0, 3),
                    train_loss,
                    lr,
                    round(speed, 1),
                )
            )
        best = self.loop.best_result.nats_per_char if self.loop.best_result else None
        self.bar.show(self.loop.step, train_loss, speed, best)

    def _finish(self, stop_reason: str, clock0: float) -> TrainResult:
        """The end: the guard's last counts, a last evaluation, a resume point, the test score."""
        self._read_skips()
        elapsed = time.perf_counter() - clock0
        self._check_weights()
        if self.loop.step != self.loop.last_eval_step and self.dist.is_main:
            self._evaluate(elapsed)
        self.loop.last_eval_step = self.loop.step
        self._save_latest(time.perf_counter() - clock0)
        self.bar.close()
        test_result = None
        if self.dist.is_main:
            test_result = self._test_score()
            elapsed = time.perf_counter() - clock0
            self.folder.append_metrics(
                FinalRecord(
                    self.loop.step,
                    self.loop.chars_seen,
                    round(elapsed, 3),
                    stop_reason,
                    self.loop.best_result,
                    test_result,
                )
            )
        return TrainResult(
            folder=self.folder.path,
            steps=self.loop.step,
            elapsed=time.perf_counter() - clock0,
            chars_seen=self.loop.chars_seen,
            best_val=self.loop.best_result,
            test=test_result,
            stop_reason=stop_reason,
            sample=self.last_sample,
        )
