"""Write a big score file to the same path over and over, for tests/test_faults.py to kill at random moments.

usage: python fault_write.py PATH N FIRST_VERSION [slow-fsync]

Version v is ``N`` copies of ``float(v)`` saved with ``epoch=v``. Before each write the script prints ``begin v``
and after it ``end v``. With ``slow-fsync`` every fsync first prints ``in-fsync`` and sleeps, so that the parent can
kill the process when the temporary file is complete but not yet renamed over PATH.
"""

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning_datadiet.store import save_scores  # noqa: E402


def main() -> None:
    path, n, version = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    if len(sys.argv) > 4 and sys.argv[4] == "slow-fsync":
        real_fsync = os.fsync

        def slow_fsync(fd: int) -> None:
            print("in-fsync", flush=True)
            time.sleep(30)
            real_fsync(fd)

        os.fsync = slow_fsync
    while True:
        print(f"begin {version}", flush=True)
        save_scores(path, torch.full((n,), float(version)), method="el2n", epoch=version)
        print(f"end {version}", flush=True)
        version += 1


if __name__ == "__main__":
    main()
