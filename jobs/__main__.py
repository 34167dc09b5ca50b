"""``python -m jobs ...``, and ``spark-submit jobs/__main__.py ...`` (run as a file, without its package)."""

import os
import sys

if not __package__:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs.cli import main

sys.exit(main())
