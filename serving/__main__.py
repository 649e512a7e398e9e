"""`python -m serving`: start the prediction server (settings from the environment)."""

import gc
import sys

# No garbage collection while the start-up imports and the model load allocate (numpy,
# onnxruntime and the validators build many long-lived objects): serving.server.main freezes
# them and turns it back on.
gc.disable()

from serving.server import main  # noqa: E402

sys.exit(main())
