#!/usr/bin/env python3
"""Run sozu from a checkout: `python sozu.py start -c conf/config.toml` (also installed as `sozu`)."""
import sys

from sozu.cli import main

if __name__ == "__main__":
    sys.exit(main())
