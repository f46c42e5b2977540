"""``python -m magsrl.cli``: the same as the ``magsrl`` console script."""

from magsrl.cli import main

main()
