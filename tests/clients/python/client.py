#!/usr/bin/env python3
"""Real-client check: Python `websockets` against the edge-ws echo server.

Usage: client.py ws://127.0.0.1:PORT/
       EDGE_WS_CA=ca.pem client.py wss://localhost:PORT/   (TLS, trusting the CA in ca.pem)

Echoes text, binary, 1 MiB, empty and UTF-8-heavy messages, asserts that permessage-deflate was
negotiated (websockets offers it by default), closes with 1000 and asserts the closing handshake
completed. Prints `python-websockets: N passed, M failed`; exits 1 on any failure.
"""

import asyncio
import json
import os
import ssl
import sys
import traceback
from pathlib import Path

import websockets
from websockets.asyncio.client import connect

NAME = "python-websockets"
PAYLOADS = json.loads((Path(__file__).resolve().parent.parent / "payloads.json").read_text())
UTF8 = PAYLOADS["utf8"] * PAYLOADS["utf8_repeat"]
MIB = 1 << 20


async def echo(ws, msg):
    await ws.send(msg)
    got = await asyncio.wait_for(ws.recv(), 30)
    assert type(got) is type(msg), f"sent {type(msg).__name__}, got {type(got).__name__}"
    assert got == msg, f"echo differs: sent {len(msg)}, got {len(got)}"


async def main(url):
    results = []
    tls = {}
    if url.startswith("wss://"):
        # Verified against the test CA only (hostname included): a real TLS client.
        tls["ssl"] = ssl.create_default_context(cafile=os.environ["EDGE_WS_CA"])
    async with connect(
        url, compression="deflate", max_size=64 * MIB, open_timeout=10, **tls
    ) as ws:

        async def deflate():
            header = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert "permessage-deflate" in header, f"Sec-WebSocket-Extensions: {header!r}"
            names = [e.name for e in ws.protocol.extensions]
            assert names == ["permessage-deflate"], f"negotiated extensions: {names}"

        async def text():
            await echo(ws, "Hello, edge-ws! " * 20)

        async def binary():
            await echo(ws, bytes(range(256)) * 8)

        async def large_1mib():
            await echo(ws, os.urandom(MIB))  # incompressible binary
            await echo(ws, ("edge-ws " * (MIB // 8))[:MIB])  # compressible text

        async def empty():
            await echo(ws, "")
            await echo(ws, b"")

        async def utf8_heavy():
            await echo(ws, UTF8)

        async def close_1000():
            await asyncio.wait_for(ws.close(code=1000, reason="done"), 10)
            rcvd = ws.protocol.close_rcvd
            assert rcvd is not None, "no close frame received from the server"
            assert rcvd.code == 1000, f"server answered close code {rcvd.code}"
            assert ws.protocol.close_sent is not None and ws.protocol.close_sent.code == 1000
            assert ws.state is websockets.protocol.State.CLOSED, f"state {ws.state!r}"

        for name, fn in [
            ("permessage-deflate negotiated", deflate),
            ("text echo", text),
            ("binary echo", binary),
            ("1 MiB echo (binary, text)", large_1mib),
            ("empty echo (text, binary)", empty),
            ("UTF-8-heavy text echo", utf8_heavy),
            ("close 1000 completed", close_1000),
        ]:
            try:
                await fn()
                results.append((name, None))
            except Exception as e:  # noqa: BLE001 - report every failure and go on
                results.append((name, f"{type(e).__name__}: {e}"))
                if os.environ.get("VERBOSE"):
                    traceback.print_exc()
    return results


def run(url):
    try:
        results = asyncio.run(main(url))
    except Exception as e:  # noqa: BLE001 - a failed connect is one failure
        results = [("connect", f"{type(e).__name__}: {e}")]
    failed = 0
    for name, err in results:
        if err is None:
            print(f"  ok    {name}")
        else:
            failed += 1
            print(f"  FAIL  {name}: {err}")
    name = NAME + ("-wss" if url.startswith("wss://") else "")
    print(f"{name}: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(run(sys.argv[1]))
