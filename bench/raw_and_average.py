"""The raw and the averaged weights of a run, each scored on its val and test splits.

    python bench/raw_and_average.py RUN [RUN ...]

A run trained with --average keeps both in latest.safetensors (`model.*` to resume from,
`average.*` for evaluation). Averaging draws no random numbers, so the raw weights of such a run
are those of the same run without --average: one run gives the paired comparison. Scored in the
precision the run evaluated in (machine.json); one JSON line per run, nats/char, "last" = the
val and test splits together (the last 10% of the text by default).
"""

from __future__ import annotations

import json
import sys

from nextchar.checkpoint import load_resume
from nextchar.evaluate import score_ids
from nextchar.model import CharRNN
from nextchar.runfolder import LATEST, RunFolder


def main(runs: list[str]) -> None:
    for run in runs:
        folder = RunFolder(run)
        config = folder.read_config()
        data = folder.training_data().resplit(config.data.val_frac, config.data.test_frac)
        precision = folder.read_machine().get("eval_precision", {}).get("value", "fp32")
        point = load_resume(folder.file(LATEST))
        average = (
            {"kind": point.average_kind, "count": point.average_count}
            if point.average_kind
            else None
        )
        line = {"run": run, "step": point.loop.step, "average": average, "precision": precision}
        for which, weights in (("model", point.model), ("average", point.average)):
            if not weights:
                continue
            model = CharRNN(config.model)
            model.load_state_dict(weights)
            val, test = (
                score_ids(model, data.split(split), precision=precision)
                for split in ("val", "test")
            )
            last = (val.nats_per_char * val.chars + test.nats_per_char * test.chars) / (
                val.chars + test.chars
            )
            line["raw" if which == "model" else "averaged"] = {
                "val": round(val.nats_per_char, 4),
                "test": round(test.nats_per_char, 4),
                "last": round(last, 4),
            }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
