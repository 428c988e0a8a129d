"""``python -m lstmkit.backends.native``: build the native CPU kernel now (set-up does this, so
that the first ``lstmkit train`` does not wait for it). Exit 0 when built, 1 when it cannot be."""

import sys

from lstmkit.backends import native
from lstmkit.errors import BackendError

if __name__ == "__main__":
    try:
        native.prepare()
    except BackendError as e:
        print(f"lstmkit: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"lstmkit: native CPU kernel ready in {native.build_dir()}", file=sys.stderr)
