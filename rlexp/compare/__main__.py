"""``python -m rlexp.compare`` = ``rlexp compare``."""
import sys

from rlexp.compare.cli import main

sys.exit(main())
