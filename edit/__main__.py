"""`python -m edit ...` runs the `edit` command line."""

import sys

from edit.cli import main

sys.exit(main())
