"""``python -m audiosep ...``: the same as the ``audiosep`` command."""

import sys

from audiosep.cli import main

sys.exit(main())
