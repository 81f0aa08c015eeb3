"""``python -m ingress`` is ``botrelay ingress``."""

import sys

from shared.cli import main

sys.exit(main(["ingress", *sys.argv[1:]]))
