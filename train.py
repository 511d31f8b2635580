#!/usr/bin/env python
"""Train a model from a config file. `python train.py --help` for usage; logic lives in transformer/cli.py."""

import sys

from transformer.cli import main

if __name__ == "__main__":
    sys.exit(main())
