#!/usr/bin/env python3
"""Container HEALTHCHECK: exit 0 when the worker's ``/healthz`` answers 200, else 1.

Standard library only, so the image needs no curl. The port is the worker's own setting
(``DANGERCLIP_METRICS_PORT``), read here because this runs outside the worker process.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("DANGERCLIP_METRICS_PORT", "9108")
    path = sys.argv[1] if len(sys.argv) > 1 else "/healthz"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=4) as resp:  # noqa: S310
            return 0 if resp.status == 200 else 1
    except OSError as e:
        sys.stderr.write(f"healthcheck {path}: {e}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
