"""Trainer: the loop, clipping, schedule, budget, evaluation, checkpoints, signals; DDP aware.

One step = one window of the contiguous streams (see data.py): forward with the carried hidden
state, summed cross-entropy over the window's valid targets divided by their global count,
backward, clip, optimizer step. Only rank 0 logs, evaluates, samples and writes files. A run is
set up (new or resumed) by launch.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed
from .atomic import atomic_write
from .averaging import WeightAverage
from .checkpoint import (
    LoopState,
    ResumePoint,
    build_model,
    load_resume,
    read_weights,
    save_resume,
    save_weights,
    vocab_digest,
)
from .config import RunConfig, SampleConfig
from .data import IGNORE, Streams, TokenData
from .devices import autocast, resolve_device
from .errors import Diverged, Interrupted, PeerFailure, UserError
from .evaluate import EvalResult, score_ids
from .model import CharRNN, detach_hidden
from .runfolder import BEST, LATEST, METRICS, RunFolder
from .sample import Sampler
from .schedule import lr_factor


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


def _optimizer(model: torch.nn.Module, config, fused: bool = False) -> torch.optim.Optimizer:
    """Weight decay on matrices only; biases and the embedding table's rows are left alone.
    `fused`: one kernel per step, which can also skip a step on the device (see _defers_checks)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("embed")]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and not n.startswith("embed"))]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=config.lr, betas=(0.9, 0.99), **({"fused": True} if fused else {}))


def _defers_checks(device: torch.device) -> bool:
    """Whether the per-step "is this step finite?" check stays on the device.

    On CUDA, reading it every step would make the host wait for the GPU each step; instead the
    fused optimizer skips a non-finite step by itself (found_inf) and the counts are read at log
    steps. On the CPU the check costs nothing and is read at once."""
    return device.type == "cuda"


def _zero_unless(finite: torch.Tensor, hidden):
    """The hidden state, or zeros (what None means to nn.RNN) after a non-finite step."""
    if isinstance(hidden, tuple):
        return tuple(torch.where(finite, h, 0.0) for h in hidden)
    return torch.where(finite, hidden, 0.0)


class Trainer:
    """The training loop of one run: owns the model, optimizer, carried state and counters.

    `precision` and `eval_precision` are resolved ones (fp32 or bf16), as `launch` chose them."""

    def __init__(self, config: RunConfig, data: TokenData, folder: RunFolder, *,
                 precision: str, eval_precision: str, resume: bool = False, quiet: bool = False,
                 log: TextIO | None = None, dist: distributed.Dist | None = None):
        self.config = config
        self.data = data
        self.folder = folder
        self.quiet = quiet
        self.log = log if log is not None else sys.stderr
        tc = config.train
        device = resolve_device(tc.device)
        self.dist = dist if dist is not None else distributed.setup(device.type)
        self.device = torch.device("cuda", self.dist.local_rank) if device.type == "cuda" else device
        self.precision = precision
        self.eval_precision = eval_precision
        torch.manual_seed(tc.seed)
        self.model = CharRNN(config.model).to(self.device)
        self.defer_checks = _defers_checks(self.device)
        self.optimizer = _optimizer(self.model, tc, fused=self.defer_checks)
        self.average = (WeightAverage(self.model, tc.average, tc.average_decay)
                        if tc.average != "none" else None)
        self.ddp = None
        if self.dist.active:
            with self.dist.guard("the start of data-parallel training"):
                self.ddp = torch.nn.parallel.DistributedDataParallel(
                    self.model, device_ids=[self.dist.local_rank] if self.device.type == "cuda" else None)
        self.step_model = self.ddp if self.ddp is not None else self.model  # what a step calls
        if tc.compile:
            self.step_model = torch.compile(self.step_model)
        self.streams = Streams(data.split("train"), tc.batch_size, tc.seq_len,
                               rows=self.dist.rows(tc.batch_size))
        val = data.split("val")
        self.val_ids = val[: tc.eval_chars] if tc.eval_chars else val
        windows = len(self.streams)
        planned = []
        if tc.steps:
            planned.append(tc.steps)
        if tc.epochs:
            planned.append(max(1, math.ceil(tc.epochs * windows)))
        self.total_steps = min(planned) if planned else 0
        self.budget = tc.time
        if not self.total_steps and not self.budget:
            raise UserError("give a stopping point: --steps, --epochs or --time")
        self.loop = LoopState()
        self.hidden = None
        self.eval_cost = 0.0
        self.save_cost = 0.0
        self.pending_signal = 0
        self.last_sample = ""
        if resume:
            self._restore()
        if not math.isfinite(self.loop.next_eval_time):  # a new run, or one that had no --time
            self.loop.next_eval_time = self._eval_interval_s()

    # ---- cadence -------------------------------------------------------------------------

    def _eval_interval_s(self) -> float:
        return max(10.0, self.budget / 10) if self.budget else math.inf

    def _eval_every_steps(self) -> int:
        if self.config.train.eval_every:
            return self.config.train.eval_every
        if self.total_steps and not self.budget:
            return max(1, self.total_steps // 10)
        return 0  # time-based

    def _progress(self, elapsed: float) -> float:
        fractions = []
        if self.total_steps:
            fractions.append(self.loop.step / self.total_steps)
        if self.budget:
            fractions.append(elapsed / max(1e-9, self.budget - self._reserve()))
        return max(fractions)

    def _reserve(self) -> float:
        """Seconds kept back from --time for the final evaluations and saves."""
        return 2.0 * self.eval_cost + 2.0 * self.save_cost

    # ---- state ---------------------------------------------------------------------------

    def _hidden_tensors(self) -> tuple[torch.Tensor, ...]:
        """The carried state of every rank's rows, (h,) or (h, c); () when there is none."""
        if self.hidden is None:
            return ()
        parts = self.hidden if isinstance(self.hidden, tuple) else (self.hidden,)
        return tuple(self.dist.gather_rows(t) for t in parts)

    def _check_weights(self) -> None:
        """Every rank, before weights are evaluated or saved: non-finite ones never replace good ones."""
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise Diverged(f"training diverged: the weights became non-finite by step {self.loop.step}; the "
                           f"last good checkpoint is kept in {self.folder.path}; resume with a lower "
                           f"learning rate, e.g. nextchar train --resume {self.folder.path} "
                           f"--lr {self.config.train.lr / 3:.2g}")

    def _weights_in_use(self) -> CharRNN:
        """What evaluation, best.safetensors and the previews use: the average once it has begun,
        the trained weights before that (or without averaging)."""
        if self.average is not None and self.average.count:
            return self.average.module
        return self.model

    def _save_latest(self, elapsed: float) -> None:
        self._check_weights()
        hidden = self._hidden_tensors()  # collective: every rank takes part
        if not self.dist.is_main:
            return
        started = time.perf_counter()
        self.loop.elapsed = elapsed
        average = self.average
        save_resume(self.folder.file(LATEST), ResumePoint(
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(), loop=self.loop,
            rng_cpu=torch.get_rng_state(),
            rng_cuda=torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            hidden=hidden, average=average.tensors() if average is not None else {},
            average_kind=average.kind if average is not None else None,
            average_count=average.count if average is not None else 0,
            world_size=self.dist.world, batch_size=self.config.train.batch_size,
            vocab=vocab_digest(self.data.vocab)))
        self.save_cost = time.perf_counter() - started

    def _save_best(self, result: EvalResult) -> None:
        average = self.average
        save_weights(self.folder.file(BEST), self._weights_in_use().state_dict(), step=self.loop.step,
                     val=result, vocab=vocab_digest(self.data.vocab),
                     average_kind=average.kind if average is not None else None,
                     average_count=average.count if average is not None else 0)

    def _restore(self) -> None:
        point = load_resume(self.folder.file(LATEST))
        if point.vocab not in (None, vocab_digest(self.data.vocab)):
            raise UserError(f"{self.folder.file(LATEST)} was trained with another vocabulary "
                            f"than the run's data")
        if point.batch_size != self.config.train.batch_size:
            raise UserError("--batch-size differs from the run being resumed; keep it the same")
        try:
            self.model.load_state_dict(point.model)
            self.optimizer.load_state_dict(point.optimizer)
            if self.average is not None and point.average_kind == self.average.kind:
                self.average.load(point.average, point.average_count)
            # else: averaging turned on (or changed) by this resume starts afresh
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserError(f"{self.folder.file(LATEST)} does not match this run's model ({exc})") from None
        # a resumed run may change --lr or --weight-decay; group 0 holds the decayed matrices
        for k, group in enumerate(self.optimizer.param_groups):
            group["weight_decay"] = self.config.train.weight_decay if k == 0 else 0.0
        self.loop = point.loop
        if point.hidden:
            rows = self.dist.rows(self.config.train.batch_size)
            parts = tuple(t[:, rows].to(self.device) for t in point.hidden)
            self.hidden = parts if len(parts) == 2 else parts[0]
        torch.set_rng_state(point.rng_cpu)
        if self.device.type == "cuda" and point.rng_cuda is not None:
            torch.cuda.set_rng_state(point.rng_cuda, self.device)
        # metrics logged after this checkpoint belong to a future that did not happen
        records = [r for r in self.folder.read_metrics() if r.get("step", 0) <= self.loop.step]
        if self.dist.is_main:
            atomic_write(self.folder.file(METRICS), "".join(json.dumps(r) + "\n" for r in records))

    # ---- evaluation ----------------------------------------------------------------------

    def _say(self, text: str, bar=None) -> None:
        if self.quiet or not self.dist.is_main:
            return
        if bar is not None:
            bar.write(text, file=self.log)
        else:
            print(text, file=self.log, flush=True)

    def _sample(self, length: int, seed: int) -> str:
        if length <= 0:
            return ""
        sampler = Sampler(self._weights_in_use(), self.data.vocab)  # previews: the fastest format here
        text = sampler.generate(SampleConfig(length=length, temperature=0.8, seed=seed))[0]
        self.model.train()
        return text

    def _evaluate(self, elapsed: float, bar) -> EvalResult | None:
        started = time.perf_counter()
        result = None
        if len(self.val_ids) >= 2:
            result = score_ids(self._weights_in_use(), self.val_ids, device=self.device,
                               precision=self.eval_precision)
            self.model.train()
            if result.nats_per_char < self.loop.best_val:
                self.loop.best_val = result.nats_per_char
                self.loop.best_result = result
                self._save_best(result)
        else:  # no validation text: the latest weights are the best we know
            self._save_best(EvalResult(0, math.nan, math.nan, math.nan, math.nan))
        sample = self._sample(self.config.train.sample_chars, self.config.train.seed + self.loop.step)
        self.last_sample = sample
        self.eval_cost = time.perf_counter() - started
        record = {"kind": "eval", "step": self.loop.step, "chars": self.loop.chars_seen, "time": round(elapsed, 3),
                  "sample": sample}
        if self.average is not None:  # the steps averaged into the weights scored (0: none yet)
            record["averaged_steps"] = self.average.count
        if result:
            record.update(val_loss=result.nats_per_char, val_bpc=result.bits_per_char,
                          val_accuracy=result.accuracy)
            self._say(f"step {self.loop.step:>6} | val {result.nats_per_char:.4f} nats/char, "
                      f"{result.bits_per_char:.4f} bits/char | {elapsed:.0f}s", bar)
        if sample:
            self._say("  sample: " + sample.replace("\n", "\n          "), bar)
        self.folder.append_metrics(record)
        return result

    # ---- the loop ------------------------------------------------------------------------

    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            # a second Ctrl-C aborts at once; but under torchrun the agent passes a Ctrl-C on to
            # the workers, which already had it from the terminal: they save first, as for one
            if self.pending_signal and signum == signal.SIGINT and not self.dist.active:
                raise KeyboardInterrupt
            self.pending_signal = signum

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        return previous

    def fit(self) -> TrainResult:
        previous = self._install_signals()
        try:
            return self._fit()
        except PeerFailure as exc:
            raise PeerFailure(f"{exc}. The last checkpoint in {self.folder.path} is intact: run the "
                              f"same torchrun command with nextchar train --resume {self.folder.path}"
                              ) from exc.__cause__
        finally:  # leave the group first: torchrun passes a Ctrl-C on again, and one arriving
            self.dist.close()  # while a rank waits at the closing barrier must only be recorded
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _make_bar(self):
        forced = os.environ.get("NEXTCHAR_PROGRESS") == "1"  # a bar even when stderr is no terminal
        if self.quiet or not self.dist.is_main or not (self.log.isatty() or forced):
            return None
        from tqdm import tqdm

        if self.total_steps and not self.budget:
            return tqdm(total=self.total_steps, initial=self.loop.step, file=self.log, unit="step",
                        dynamic_ncols=True, leave=True)
        return tqdm(total=int(self.budget), initial=int(self.loop.elapsed), file=self.log, unit="s",
                    dynamic_ncols=True, leave=True,
                    bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}{postfix}]")

    def _autocast(self):
        """bf16 autocast when --precision resolves to bf16 (the weights stay fp32)."""
        return autocast(self.precision, self.device)

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":  # from pinned memory the copy does not block the host
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def _read_skipped(self, counts: torch.Tensor, bar) -> None:
        """Deferred checks: read the device's counts of skipped steps (a sync, at log steps only);
        counts = (non-finite steps in a row now, longest such run, skipped steps) since last read."""
        run, longest, skipped = counts.tolist()
        counts[1:] = torch.tensor([run, 0])
        if skipped:
            if self.dist.is_main:
                self.folder.append_metrics({"kind": "skipped", "step": self.loop.step, "count": skipped,
                                            "reason": "non-finite loss or gradient"})
            self._say(f"step {self.loop.step}: {skipped} step(s) with a non-finite loss or gradient "
                      f"skipped since the last log line", bar)
        if longest >= self.config.train.max_bad_steps:
            self._diverged(longest)

    def _diverged(self, bad_in_row: int):
        tc = self.config.train
        raise Diverged(f"training diverged: {bad_in_row} non-finite steps in a row at step "
                       f"{self.loop.step}; the last good checkpoint is kept in {self.folder.path}; "
                       f"resume with a lower learning rate, e.g. nextchar train --resume "
                       f"{self.folder.path} --lr {tc.lr / 3:.2g}")

    def _average_step(self, elapsed: float) -> None:
        """Fold the weights after this step into the average, once the run is far enough in."""
        if self.average is not None and self._progress(elapsed) >= self.config.train.average_start:
            self.average.update(self.model)

    def _fit(self) -> TrainResult:
        tc = self.config.train
        model = self.step_model
        model.train()
        params = [p for p in self.model.parameters()]
        V = self.config.model.vocab_size
        world = self.dist.world
        windows = len(self.streams)
        eval_every = self._eval_every_steps()
        clock0 = time.perf_counter() - self.loop.elapsed
        last_ckpt_time = time.perf_counter()
        bar = self._make_bar()
        defer = self.defer_checks
        log_loss = torch.zeros((), dtype=torch.float64, device=self.device if defer else "cpu")
        bad_counts = torch.zeros(3, dtype=torch.int64, device=self.device)  # see _read_skipped
        log_valid = 0
        log_time = time.perf_counter()
        log_chars = 0
        bad_in_row = 0
        stop_reason = ""
        if self.loop.step == 0 and self.dist.is_main and not self.quiet:
            self._say(f"training {self.config.model.cell} {self.config.model.layers}x"
                      f"{self.config.model.hidden} ({self.model.num_parameters():,} parameters) on "
                      f"{len(self.data.split('train')):,} chars, vocab {V}, device {self.device}, "
                      f"{world} process{'es' if world > 1 else ''}")
        while True:
            elapsed = time.perf_counter() - clock0
            time_up = bool(self.budget) and elapsed + self._reserve() >= self.budget
            steps_done = bool(self.total_steps) and self.loop.step >= self.total_steps
            ckpt_due = tc.checkpoint_every > 0 and time.perf_counter() - last_ckpt_time >= tc.checkpoint_every
            eval_due_time = not eval_every and elapsed >= self.loop.next_eval_time
            flags = self.dist.any_flags([int(self.pending_signal), int(time_up), int(steps_done),
                                         int(ckpt_due and self.dist.is_main),
                                         int(eval_due_time and self.dist.is_main)])
            signum, time_up, steps_done, ckpt_due, eval_due_time = flags
            if signum:
                stop_reason = "signal"
                self._save_latest(elapsed)
                name = signal.Signals(signum).name
                raise Interrupted(f"{name} received: stopped at step {self.loop.step} and saved a resumable "
                                  f"checkpoint; continue with: nextchar train --resume {self.folder.path}",
                                  signum)
            if time_up or steps_done:
                stop_reason = "time" if time_up else "steps"
                break
            eval_due = (eval_every and self.loop.step % eval_every == 0 and self.loop.step > 0) or eval_due_time
            if eval_due and self.loop.step != self.loop.last_eval_step:
                self._check_weights()
                if self.dist.is_main:
                    self._evaluate(elapsed, bar)
                self.loop.last_eval_step = self.loop.step
                while self.loop.next_eval_time <= elapsed:
                    self.loop.next_eval_time += self._eval_interval_s()
                self._save_latest(time.perf_counter() - clock0)
                last_ckpt_time = time.perf_counter()
            elif ckpt_due or (tc.checkpoint_every_steps and self.loop.step % tc.checkpoint_every_steps == 0
                              and self.loop.step > 0):
                self._save_latest(elapsed)
                last_ckpt_time = time.perf_counter()

            window = self.loop.step % windows
            if window == 0:
                self.hidden = None  # each epoch starts its streams afresh
            x, y, valid = self.streams.window(window)
            local_valid = int((y != IGNORE).sum())  # this rank's share of the global `valid`
            x, y = self._to_device(x), self._to_device(y)
            lr = tc.lr * lr_factor(self.loop.step, self._progress(elapsed), tc.warmup_steps,
                                   tc.schedule, tc.final_lr_frac)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            with self._autocast():
                logits, hidden = model(x, self.hidden)  # (B, T, V)
                loss_sum = F.cross_entropy(logits.reshape(-1, V).float(), y.reshape(-1),
                                           ignore_index=IGNORE, reduction="sum")
            # DDP averages gradients over ranks: x world / global count = the one-process gradient.
            # A non-finite loss on any rank makes its gradient NaN, which the all-reduce hands to
            # every rank, so `finite` below (from the reduced gradient) is the same on all ranks.
            scale = torch.where(torch.isfinite(loss_sum.detach()), world / valid, math.nan)
            loss = loss_sum * scale
            self.optimizer.zero_grad(set_to_none=True)
            with self.dist.guard("the gradient all-reduce"):
                loss.backward()
            if tc.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            else:
                norm = torch.linalg.vector_norm(torch.stack(
                    [torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None]))
            finite = torch.isfinite(norm)  # NaN if the loss or any gradient was not finite
            self.loop.step += 1
            self.loop.chars_seen += valid
            if defer:  # no host sync: the fused optimizer skips a non-finite step on the device
                self.optimizer.found_inf = (~finite).float()
                self.optimizer.step()
                self._average_step(elapsed)  # a skipped step averages the unchanged weights again
                self.hidden = _zero_unless(finite, detach_hidden(hidden))
                bad = (~finite).long()
                bad_counts[0] = (bad_counts[0] + 1) * bad
                bad_counts[1] = torch.maximum(bad_counts[1], bad_counts[0])
                bad_counts[2] += bad
                log_loss += torch.where(finite, loss_sum.detach().double(), 0.0)
                log_valid += finite.long() * local_valid
            elif bool(finite):
                self.optimizer.step()
                self._average_step(elapsed)
                self.hidden = detach_hidden(hidden)
                bad_in_row = 0
                log_loss += float(loss_sum.detach())
                log_valid += local_valid
            else:
                bad_in_row += 1
                self.hidden = None
                if self.dist.is_main:
                    self.folder.append_metrics({"kind": "skipped", "step": self.loop.step,
                                                "reason": "non-finite loss or gradient"})
                self._say(f"step {self.loop.step}: non-finite loss or gradient, step skipped", bar)
                if bad_in_row >= tc.max_bad_steps:
                    self._diverged(bad_in_row)
            log_chars += valid
            if self.loop.step % tc.log_every == 0:
                if defer:
                    self._read_skipped(bad_counts, bar)
                total_loss = self.dist.sum(float(log_loss))
                total_valid = self.dist.sum(float(log_valid))
                now = time.perf_counter()
                speed = log_chars / max(1e-9, now - log_time)
                train_loss = total_loss / max(1.0, total_valid)
                if self.dist.is_main:
                    self.folder.append_metrics({"kind": "train", "step": self.loop.step, "chars": self.loop.chars_seen,
                                                "time": round(now - clock0, 3), "loss": train_loss,
                                                "lr": lr, "chars_per_s": round(speed, 1)})
                if bar is not None:
                    postfix = {"step": self.loop.step, "loss": f"{train_loss:.3f}", "chars/s": f"{speed:,.0f}"}
                    if self.loop.best_result:
                        postfix["val"] = f"{self.loop.best_result.nats_per_char:.3f}"
                    bar.set_postfix(postfix, refresh=False)
                log_loss.zero_()
                log_valid = 0
                log_time, log_chars = now, 0
            if bar is not None:
                if self.total_steps and not self.budget:
                    bar.update(1)
                else:
                    bar.update(min(int(time.perf_counter() - clock0), int(self.budget)) - bar.n)
        # ---- the end: last evaluation, resumable checkpoint, test score of the best weights
        if defer:
            self._read_skipped(bad_counts, bar)
        elapsed = time.perf_counter() - clock0
        self._check_weights()
        if self.loop.step != self.loop.last_eval_step and self.dist.is_main:
            self._evaluate(elapsed, bar)
        self.loop.last_eval_step = self.loop.step
        self._save_latest(time.perf_counter() - clock0)
        if bar is not None:
            bar.close()
        test_result = None
        sample = self.last_sample
        if self.dist.is_main:
            test_ids = self.data.split("test")
            test_ids = test_ids[: tc.eval_chars] if tc.eval_chars else test_ids
            if len(test_ids) >= 2 and self.folder.file(BEST).exists():
                best, _ = read_weights(self.folder.file(BEST))
                scorer = build_model(best, self.config.model).to(self.device)
                test_result = score_ids(scorer, test_ids, device=self.device,
                                        precision=self.eval_precision)
            elapsed = time.perf_counter() - clock0
            final = {"kind": "final", "step": self.loop.step, "chars": self.loop.chars_seen, "time": round(elapsed, 3),
                     "stop": stop_reason,
                     "val": self.loop.best_result.to_dict() if self.loop.best_result else None,
                     "test": test_result.to_dict() if test_result else None}
            self.folder.append_metrics(final)
        return TrainResult(folder=self.folder.path, steps=self.loop.step, elapsed=time.perf_counter() - clock0,
                           chars_seen=self.loop.chars_seen, best_val=self.loop.best_result, test=test_result,
                           stop_reason=stop_reason, sample=sample)
