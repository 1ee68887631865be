"""``python -m unetkit``: the command line, as torchrun needs it (``torchrun ... -m unetkit train ...``)."""

from .cli import main

if __name__ == "__main__":
    main()
