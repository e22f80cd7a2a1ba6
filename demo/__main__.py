"""`python -m demo`: see `demo.app`."""

import sys

from demo.app import main

sys.exit(main())
