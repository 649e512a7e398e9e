"""HEALTHCHECK probe with nothing but the standard library: exit 0 only if /ready says 200."""

import os
import sys
import urllib.error
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/ready"
try:
    with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - fixed loopback URL
        sys.exit(0 if resp.status == 200 else 1)
except (urllib.error.URLError, OSError) as exc:
    print(f"not ready: {exc}", file=sys.stderr)
    sys.exit(1)
