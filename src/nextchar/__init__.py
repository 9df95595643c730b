"""nextchar: character-level recurrent language models on PyTorch.

    import nextchar
    run = nextchar.train("input.txt", out="runs/mine", time=180)
    model = nextchar.load("runs/mine")
    print(model.generate("ROMEO:", length=200, temperature=0.8))
    print(model.evaluate(open("other.txt").read()).bits_per_char)

Names are imported on first use, so `nextchar --help` does not pay for importing torch.
"""

from importlib import import_module

__version__ = "0.1.0"
__all__ = ["Model", "Run", "UserError", "Vocab", "load", "prepare", "train"]
_HOMES = {
    "Model": "api",
    "Run": "api",
    "load": "api",
    "prepare": "api",
    "train": "api",
    "UserError": "errors",
    "Vocab": "vocab",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'nextchar' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
