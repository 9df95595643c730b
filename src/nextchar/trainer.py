"""The training loop of one run, reading top to bottom in `Trainer._fit`; DDP aware.

One step = one window of the contiguous streams (see data.py): forward with the carried hidden
state, summed cross-entropy over the window's valid targets divided by their global count,
backward, clip, optimizer step. Only rank 0 logs, evaluates, samples and writes files. Beside the
loop: cadence.py (when to stop, evaluate, save), guard.py (non-finite steps), logwindow.py (the
log line and the progress bar), signals.py (Ctrl-C), optimizer.py, snapshots.py (saving and
restoring the weights, through checkpoint.py); launch.py sets a run up.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from typing import TextIO

import torch
import torch.nn.functional as F

from . import distributed, overfit
from .averaging import WeightAverage
from .cadence import Cadence
from .checkpoint import LoopState
from .config import RunConfig
from .data import IGNORE, Streams, TokenData
from .devices import autocast, resolve_device, to_device
from .errors import Diverged, Interrupted, PeerFailure
from .evaluate import EvalResult
from .guard import NonFiniteGuard, Ok, carry, taken
from .logwindow import LogWindow, ProgressBar
from .metrics import EvalRecord, FinalRecord, SkippedRecord, TrainRecord, TrainResult
from .model import CharRNN
from .optimizer import build_optimizer, clip_gradients, defers_checks
from .runfolder import RunFolder
from .schedule import lr_factor
from .signals import StopSignals
from .snapshots import Snapshots
from .validation import Validation


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
        self.optimizer = build_optimizer(self.raw_model, tc)
        defer = defers_checks(self.device, self.optimizer)
        self.nonfinite = NonFiniteGuard(self.device, defer, tc.max_bad_steps)
        self.average = WeightAverage.of(self.raw_model, tc)  # None without --average
        # what a step calls: DDP around the bare model with several processes, compiled with --compile
        self.model = self.dist.wrap(self.raw_model, self.device)
        self.model = torch.compile(self.model) if tc.compile else self.model
        self.streams = Streams(
            data.split("train"), tc.batch_size, tc.seq_len, rows=self.dist.rows(tc.batch_size)
        )
        self.validation = Validation(data, tc, self.device, eval_precision)
        self.cadence = Cadence.plan(tc, len(self.streams))
        self.snapshots = Snapshots(folder, data.vocab, tc.batch_size, self.device)
        self.loop = LoopState()
        self.hidden = None
        self.signals = StopSignals(self.dist.active)
        self.last_sample = ""
        self.bar = ProgressBar(self.log, show=False, by_steps=False, total=0, initial=0)
        if resume:
            self._restore()
        if not math.isfinite(self.loop.next_eval_time):  # a new run, or one that had no --time
            self.loop.next_eval_time = self.cadence.eval_interval()

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

    def _save_latest(self, elapsed: float) -> None:
        self._check_weights()
        hidden = self.dist.gather_hidden(self.hidden)  # collective: every rank takes part
        if not self.dist.is_main:
            return
        started = time.perf_counter()
        self.loop.elapsed = elapsed
        self.snapshots.save_latest(
            self.raw_model, self.optimizer, self.loop, hidden, self.average, self.dist.world
        )
        self.cadence.save_cost = time.perf_counter() - started

    def _save_best(self, result: EvalResult) -> None:
        weights = self._weights_in_use()
        self.snapshots.save_best(weights, self.loop.step, result, self.average)

    def _restore(self) -> None:
        tc = self.config.train
        point = self.snapshots.restore(
            self.raw_model, self.optimizer, self.average, tc.weight_decay
        )
        self.loop = point.loop
        if point.hidden:
            rows = self.dist.rows(tc.batch_size)
            parts = tuple(t[:, rows].to(self.device) for t in point.hidden)
            self.hidden = parts if len(parts) == 2 else parts[0]
        if self.dist.is_main:  # metrics logged after this point: a future that never came
            self.folder.truncate_metrics(self.loop.step)

    # ---- evaluation ----------------------------------------------------------------------

    def _say(self, text: str) -> None:
        if not self.quiet and self.dist.is_main:
            self.bar.say(text)

    def _evaluate(self, elapsed: float) -> EvalResult | None:
        """Rank 0: score the validation text, keep the best weights, draw a preview, log them."""
        started, weights = time.perf_counter(), self._weights_in_use()
        result = self.validation.score_val(weights)
        if result is None:  # no validation text: the latest weights are the best we know
            self._save_best(EvalResult(0, math.nan, math.nan, math.nan, math.nan))
        elif result.nats_per_char < self.loop.best_val:
            self.loop.best_val, self.loop.best_result = result.nats_per_char, result
            self._save_best(result)
        self.last_sample = sample = self.validation.preview(weights, self.loop.step)
        self.cadence.eval_cost = time.perf_counter() - started
        if result:
            self._say(
                f"step {self.loop.step:>6} | val {result.nats_per_char:.4f} nats/char, "
                f"{result.bits_per_char:.4f} bits/char | {elapsed:.0f}s"
            )
        if sample:
            self._say("  sample: " + sample.replace("\n", "\n          "))
        averaged_steps = self.average.count if self.average is not None else None
        record = EvalRecord.of(
            self.loop.step, self.loop.chars_seen, round(elapsed, 3), sample, result, averaged_steps
        )
        self.folder.append_metrics(record)
        return result

    def _evaluate_and_save(self, elapsed: float, clock0: float) -> None:
        """Every rank: an evaluation (rank 0 scores) and a resume point after it."""
        self._check_weights()
        result = self._evaluate(elapsed) if self.dist.is_main else None
        if self.config.train.on_overfit == "regularise" and not self.loop.regularised_at:
            self._regularise_if_stalled(result, elapsed)
        self.loop.last_eval_step = self.loop.step
        self.loop.next_eval_time = self.cadence.next_eval_after(self.loop.next_eval_time, elapsed)
        self._save_latest(time.perf_counter() - clock0)

    def _regularise_if_stalled(self, result: EvalResult | None, elapsed: float) -> None:
        """Every rank: --on-overfit regularise, from the step rank 0's validation stalled."""
        progress = self.cadence.progress(self.loop.step, elapsed)
        record = overfit.check(result, self.loop, progress, elapsed)  # rank 0's verdict
        if self.dist.any_flags([int(record is not None)])[0]:
            self.loop.regularised_at = self.loop.step
            overfit.regularise(self.raw_model, self.optimizer)
            if record is not None:
                self._say(overfit.describe(record))
                self.folder.append_metrics(record)

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
            signum, time_up, steps_done, save_by_clock, eval_by_clock = self._agree(
                elapsed, time.perf_counter() - last_save
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
            lr = self._set_lr(step, elapsed)
            loss_sum, ok, local_valid, valid = self._step(elapsed)
            logged.add(loss_sum, ok, local_valid, valid)
            # ---- the divergence guard's counts, and the log line
            if self.nonfinite.due(self.loop.step, tc.log_every):
                self._read_skips()
            if self.loop.step % tc.log_every == 0:
                self._log_line(logged, lr, clock0)
            self.bar.advance(time.perf_counter() - clock0)
        return self._finish(stop_reason, clock0)

    def _agree(self, elapsed: float, since_save: float) -> list[int]:
        """The same answers on every rank -> [signal number or 0, time up, steps done, save by
        the clock, evaluate by the clock] (rank 0's clock decides the last two)."""
        cadence, main = self.cadence, self.dist.is_main
        return self.dist.any_flags(
            [
                int(self.signals.received),
                int(cadence.time_up(elapsed)),
                int(cadence.steps_done(self.loop.step)),
                int(cadence.save_by_clock(since_save) and main),
                int(cadence.eval_by_clock(elapsed, self.loop.next_eval_time) and main),
            ]
        )

    def _set_lr(self, step: int, elapsed: float) -> float:
        """The schedule's learning rate for this step, set on the optimizer -> the rate."""
        tc = self.config.train
        progress = self.cadence.progress(step, elapsed)
        lr = tc.lr * lr_factor(
            step, progress, tc.warmup_steps, tc.schedule, tc.final_lr_frac, tc.cooldown
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

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
        x, y = to_device(x, self.device), to_device(y, self.device)
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
        finite = torch.isfinite(
            clip_gradients(self.params, self.config.train.grad_clip)
        )  # NaN if the loss or any gradient was not finite
        self.loop.step += 1
        self.loop.chars_seen += valid
        ok = self.nonfinite.step(self.optimizer, finite)  # False, or on the device (see guard.py)
        progress = self.cadence.progress(self.loop.step, elapsed)
        if taken(ok) and self.average is not None and progress >= self.config.train.average_start:
            self.average.update(self.raw_model)
        self.hidden = carry(hidden, ok)
        return loss_sum, ok, local_valid, valid

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
        loop, seconds = self.loop, round(now - clock0, 3)
        if self.dist.is_main:
            record = TrainRecord(
                loop.step, loop.chars_seen, seconds, train_loss, lr, round(speed, 1)
            )
            self.folder.append_metrics(record)
        best = loop.best_result.nats_per_char if loop.best_result else None
        self.bar.show(loop.step, train_loss, speed, best)

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
        test_result, loop = None, self.loop
        if self.dist.is_main:
            test_result = self.validation.score_test(
                lambda: self.snapshots.best_model(self.config.model)
            )
            seconds = round(time.perf_counter() - clock0, 3)
            final = FinalRecord(
                loop.step, loop.chars_seen, seconds, stop_reason, loop.best_result, test_result
            )
            self.folder.append_metrics(final)
        return TrainResult(
            folder=self.folder.path,
            steps=loop.step,
            elapsed=time.perf_counter() - clock0,
            chars_seen=loop.chars_seen,
            best_val=loop.best_result,
            test=test_result,
            stop_reason=stop_reason,
            sample=self.last_sample,
        )
