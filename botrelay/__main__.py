"""``python -m botrelay`` is the ``botrelay`` command."""

import sys

from botrelay.cli import main

sys.exit(main())
