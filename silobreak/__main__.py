"""`python -m silobreak` runs the command line."""

from silobreak.cli import main

main()
