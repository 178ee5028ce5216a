"""Entry point of `python -m bench`; the work is in bench/cli.py."""

import sys

from bench.cli import main

sys.exit(main())
