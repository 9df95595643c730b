"""The options of a tiny model that trains in about a second on one thread (API keyword form)."""

TINY = {
    "hidden": 32,
    "layers": 1,
    "embed": 16,
    "batch_size": 4,
    "seq_len": 16,
    "lr": 1e-2,
    "sample_chars": 20,
    "warmup_steps": 5,
    "log_every": 5,
}
