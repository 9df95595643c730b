"""Learning-rate schedule: linear warmup, then cosine, linear or warmup-stable-decay ("wsd": the
full rate until the last `cooldown` of the run, then linear to the final rate; Hagele et al. 2024,
"Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations") over the run's
progress."""

from __future__ import annotations

import math

COOLDOWN = 0.2  # share of the run over which "wsd" decays, unless --cooldown says otherwise


def lr_factor(
    step: int,
    progress: float,
    warmup_steps: int,
    schedule: str,
    final_frac: float,
    cooldown: float = COOLDOWN,
) -> float:
    """Multiplier of the base lr at `step`, where `progress` in [0, 1] is how much of the run
    (steps, epochs or wall-clock budget) is done; "wsd" decays over its last `cooldown`."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    p = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        decay = final_frac + (1.0 - final_frac) * 0.5 * (1.0 + math.cos(math.pi * p))
    elif schedule == "linear":
        decay = 1.0 - (1.0 - final_frac) * p
    elif schedule == "wsd":
        decay = 1.0 - (1.0 - final_frac) * max(0.0, p - (1.0 - cooldown)) / cooldown
    else:
        decay = 1.0
    return warm * decay
