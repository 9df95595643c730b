"""`auto`, decided by measuring: time each candidate on this machine, on the run's own shapes,
and remember the timings.

How fast a way of computing is depends on the machine: bf16 autocast doubles training speed on a
CPU with AMX and slows it by 1.4x on one that only emulates bf16 (BENCHMARKS.md). So every `auto`
(training and evaluation precision, the sampler's weight format, the budget's model width) times
its candidates for a bounded time, takes the fastest (never one slower than fp32), and caches the
timings per machine (CPU name and flags, oneDNN/ATen ISA caps, torch version, threads, the
allocator's setting) and shapes in the user's cache directory ($NEXTCHAR_CACHE_DIR, else
$XDG_CACHE_HOME/nextchar, else ~/.cache/nextchar). A damaged or foreign cache entry is ignored,
never an error.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import allocator
from .atomic import CheckpointWriteError, atomic_write

CACHE_VERSION = 1
MARGIN = (
    0.03  # a candidate other than fp32 must be this much faster: noise never buys a slower path
)
# a candidate this many times slower than the fastest in each of two rounds is out: emulated bf16
# (1.3x slower than fp32 without AMX) goes after two calls, a near tie (1.2x) is timed on
CLEAR_LOSS = 1.25
ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
CPU_FLAGS = ("amx_bf16", "amx_tile", "amx_int8", "avx512_bf16", "avx512f", "avx2")


@dataclass(frozen=True)
class Choice:
    """What `auto` settled on, and the evidence: seconds per unit of work of each candidate."""

    value: str
    timings: dict[str, float] = field(default_factory=dict)
    how: str = "measured"  # measured | cached | only candidate | named

    def describe(self, unit_chars: float = 1.0) -> str:
        """'fp32 (measured: fp32 12.1k chars/s, bf16 8.6k)' with unit_chars characters per unit."""
        if not self.timings or self.how in ("named", "only candidate"):
            return f"{self.value} ({self.how})"
        speeds = ", ".join(
            f"{name} {_short(unit_chars / seconds)}"
            for name, seconds in sorted(self.timings.items(), key=lambda kv: kv[1])
        )
        return f"{self.value} ({self.how}: {speeds} chars/s)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "how": self.how,
            "seconds": {k: round(v, 7) for k, v in self.timings.items()},
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Choice:
        return cls(record["value"], dict(record.get("seconds", {})), record.get("how", "measured"))


def _short(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def pick(timings: dict[str, float], baseline: str = "fp32", margin: float = MARGIN) -> str:
    """The fastest candidate (least seconds per unit). Anything but the baseline must beat the
    baseline by `margin`, so `auto` never takes a path slower than fp32 on the strength of noise."""
    if not timings:
        return baseline
    best = min(timings, key=timings.__getitem__)
    if (
        baseline in timings
        and best != baseline
        and timings[best] > timings[baseline] * (1 - margin)
    ):
        return baseline
    return best


# ---- the machine ---------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> dict[str, bool]:
    """The instruction-set flags that decide bf16 and int8 speed, as the kernel reports them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return {flag: flag in have for flag in CPU_FLAGS}
    except OSError:
        pass
    return {}


def l2_bytes() -> int:
    """Per-core L2 size (it decides whether int8 sampling weights stay in cache), 0 if unknown."""
    try:
        for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
                return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    try:
        return max(0, int(os.sysconf("SC_LEVEL2_CACHE_SIZE")))
    except (ValueError, OSError, AttributeError):
        return 0


def machine(device: torch.device | None = None) -> dict[str, Any]:
    """What a timing depends on: the processor, its flags, the ISA caps set in the environment,
    torch and its threads, whether freed memory is kept (allocator.py), and the accelerator if
    one is used."""
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "flags": cpu_flags(),
        "l2_bytes": l2_bytes(),
        "isa_caps": {v: os.environ[v] for v in ISA_VARIABLES if os.environ.get(v)},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "allocator": allocator.state(),
    }
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def bf16_possible(device: torch.device) -> bool:
    """Whether bf16 matrix work runs here at all (natively or not): only then is it timed. On
    CUDA, emulated bf16 does not count."""
    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch before 2.4 has no including_emulation
            return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


# ---- the cache -----------------------------------------------------------------------------


def cache_dir() -> Path:
    if os.environ.get("NEXTCHAR_CACHE_DIR"):
        return Path(os.environ["NEXTCHAR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nextchar"


def _entry_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / f"autotune-{key['kind']}-{digest}.json"


def cache_get(key: dict[str, Any]) -> dict[str, float] | None:
    """The timings stored for exactly `key`, or None (missing, damaged or another key's)."""
    try:
        entry = json.loads(_entry_path(key).read_text(encoding="utf-8"))
        timings = entry["seconds"]
        if entry.get("version") != CACHE_VERSION or entry.get("key") != key or not timings:
            return None
        if not all(
            isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in timings.values()
        ):
            return None
        return {str(k): float(v) for k, v in timings.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def cache_put(key: dict[str, Any], timings: dict[str, float]) -> None:
    """Store timings atomically; a cache that cannot be written is simply not used."""
    path = _entry_path(key)
    entry = json.dumps({"version": CACHE_VERSION, "key": key, "seconds": timings})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, entry)
    except (OSError, CheckpointWriteError):
        pass


# ---- timing --------------------------------------------------------------------------------


def time_interleaved(
    candidates: dict[str, Callable[[], Any]],
    budget_s: float,
    sync: Callable[[], None] = lambda: None,
    max_rounds: int = 50,
    warm_up: bool = True,
) -> dict[str, float]:
    """Median seconds per call of each candidate. One warm-up call each (unless they have just
    run: `warm_up=False`), then the candidates in turn (so drift in machine load hits all of them)
    until `budget_s` is spent: at least one timed round, and three whenever the first round
    leaves room for them. A candidate CLEAR_LOSS times slower than the fastest in each of the
    first two rounds is timed no further (`clear`): one stall of the real winner (another
    process, the OS) cannot put it out, and a wrong pick would be cached for the machine."""
    started = time.perf_counter()
    working = {}
    for name, fn in candidates.items():
        try:  # a kernel the ISA caps rule out (bf16 under ONEDNN_MAX_CPU_ISA=AVX2) is no candidate
            if warm_up:
                fn()
                sync()
            working[name] = fn
        except RuntimeError:
            continue
    if not working:
        raise RuntimeError(f"none of {', '.join(candidates)} runs on this machine")
    candidates = working
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(max_rounds):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
        if round_ == 1:
            best = {n: min(times[n]) for n in candidates}  # each one's better round of two
            fastest = min(best.values())
            candidates = {
                n: fn for n, fn in candidates.items() if not _lost_clearly(best[n], fastest)
            }
        if round_ >= 2 and time.perf_counter() - started >= budget_s:
            break
        if round_ < 2 and time.perf_counter() - started >= 2 * budget_s:
            break
    return {name: statistics.median(ts) for name, ts in times.items()}


def _lost_clearly(seconds: float, fastest: float) -> bool:
    return seconds >= CLEAR_LOSS * fastest


def clear_losers(timings: dict[str, float]) -> tuple[str, ...]:
    """The timed candidates that lost to the fastest by CLEAR_LOSS or more."""
    fastest = min(timings.values(), default=0.0)
    return tuple(name for name, seconds in timings.items() if _lost_clearly(seconds, fastest))


def clear(timings: dict[str, float]) -> bool:
    """Whether the slowest of several timed candidates lost by CLEAR_LOSS or more (so the fastest
    ran alone after the first two rounds of time_interleaved)."""
    return bool(clear_losers(timings))


def decide(
    kind: str,
    shapes: dict[str, Any],
    device: torch.device,
    measure: Callable[[], dict[str, float]],
    baseline: str = "fp32",
) -> Choice:
    """The cached timings for (machine, kind, shapes), else `measure()` them and cache them;
    -> the pick among them."""
    key = {"kind": kind, "shapes": shapes, "device": device.type, "machine": machine(device)}
    timings = cache_get(key)
    how = "cached"
    if timings is None:
        timings = measure()
        allocator.release()
        cache_put(key, timings)
        how = "measured"
    if len(timings) == 1:
        return Choice(next(iter(timings)), timings, how)
    return Choice(pick(timings, baseline), timings, how)


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None
