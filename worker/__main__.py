"""``python -m worker`` is ``botrelay worker``."""

import sys

from shared.cli import main

sys.exit(main(["worker", *sys.argv[1:]]))
