"""`python -m ablate.report`: exits as `ablate report` does, with main()'s status."""

import sys

from ablate.report import main

sys.exit(main())
