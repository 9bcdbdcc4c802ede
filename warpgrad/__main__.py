"""``python -m warpgrad`` (and ``torchrun -m warpgrad``) is the ``warpgrad`` command."""

from warpgrad.cli import main

main(prog_name="warpgrad")
