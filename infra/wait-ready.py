"""Waits until a URL answers 200 (used by `make up`): wait-ready.py URL TIMEOUT_SECONDS."""
import sys
import time
import urllib.request

url, timeout = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + timeout
while True:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except Exception:
        pass
    if time.monotonic() > deadline:
        print(f"{url} not ready after {timeout:.0f}s", file=sys.stderr)
        sys.exit(1)
    time.sleep(0.2)
