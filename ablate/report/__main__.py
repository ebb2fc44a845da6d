"""`python -m ablate.report`: exits as `ablate report` does, with main()'s status."""

import sys

from ablate.report import main

if __name__ == "__main__":
    sys.exit(main())
