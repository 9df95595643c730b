"""`python -m nextchar` (also what torchrun runs with -m)."""

from .cli import main

if __name__ == "__main__":
    main()
