"""`python -m shared.cli`: the same command as `turnstream`."""

from shared.cli.cli import main

main()
