"""`python -m serving`: start the prediction server (settings from the environment)."""

import sys

from serving.server import main

sys.exit(main())
