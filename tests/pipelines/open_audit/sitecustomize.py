"""Put on PYTHONPATH with OPEN_AUDIT_LOG set, every Python process (dvc and the stages) appends
each dataset file it opens to that log: a Python audit hook (PEP 578) sees every open() (DVC
hashes files through it), not pyarrow's own reads."""

import os
import sys

_LOG = os.environ.get("OPEN_AUDIT_LOG")

if _LOG:
    _FD = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def _audit(event: str, args: tuple) -> None:
        if event == "open" and args and isinstance(args[0], (str, bytes)):
            path = os.fsdecode(args[0])
            if "/data/dataset/" in path and path.endswith(".parquet"):
                os.write(_FD, f"{path}\n".encode())  # os.write: no open(), no recursion

    sys.addaudithook(_audit)
