"""`python -m xling.cli`: how `xling serve` starts its worker, independent of the current directory."""

from xling.cli.main import main

main()
