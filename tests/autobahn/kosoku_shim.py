"""`python kosoku_shim.py ARGS...` = `kosoku ARGS...` with one runner bug worked around.

kosoku 0.1.0 hands the compression cases 12.x/13.x (Autobahn's case12_x_x.py, written for
Python 2 where str is bytes) every echoed message that arrived *compressed* as `bytes`, but one
that arrived *uncompressed* (RSV1 clear, which RFC 7692 §6 allows on a permessage-deflate
connection: the server decides per message) as a `str`. The case then calls
`hashlib.sha1().update(msg)` and dies with "TypeError: Strings must be encoded before hashing";
kosoku reports that as behavior ERROR although the echo was correct. edge-ws sends messages of
at most `compression.threshold` (default 128) bytes uncompressed, so cases 12.X.1 and 12.X.2
(16- and 64-byte messages) and the same 13.X.Y all hit it.

This wrapper turns such a `str` back into the bytes on the wire (latin-1 for binary messages,
which is how kosoku decoded them, UTF-8 for text) before the case sees it; the case's own checks
(type, length, SHA-1 of the payload) then run unchanged. Nothing else is patched.
"""

import sys

import kosoku.cases  # noqa: F401  (builds the case index; puts the case modules on sys.path)
import case12_x_x  # the module the index imported: same classes
from kosoku._cli import main


def _bytes_on_message(original):
    def onMessage(self, msg, binary):  # noqa: N802 (Autobahn's name)
        if isinstance(msg, str):
            msg = msg.encode("latin-1" if binary else "utf-8")
        return original(self, msg, binary)

    return onMessage


for _case in case12_x_x.Case12_X_X + case12_x_x.Case13_X_X:
    _case.onMessage = _bytes_on_message(_case.onMessage)

if __name__ == "__main__":
    sys.argv[0] = "kosoku"
    sys.exit(main())
