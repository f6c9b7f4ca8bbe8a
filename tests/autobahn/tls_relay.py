#!/usr/bin/env python3
"""Loopback relay that carries a plain-TCP WebSocket client over TLS to edge-ws.

    tls_relay.py --listen 127.0.0.1:PORT --connect 127.0.0.1:TLS_PORT --ca CA.pem
                 [--server-name localhost] [--tls-version 1.3|1.2] [--stats FILE]

The Autobahn runner (kosoku) speaks plain `ws://` only. This relay accepts its connections and
opens, for each, one TLS connection to edge-ws's TLS listener (trusting only the test CA,
checking the certificate's name), then relays bytes both ways unchanged: every byte kosoku
sends becomes TLS application data as it arrives (one `SSLObject.write` per read, so record
boundaries follow kosoku's own writes, octet-by-octet chops included), and every byte edge-ws
sends is decrypted and passed on. The TLS state runs on memory BIOs (`ssl.SSLObject`), so
the relay decides what happens at each end of the connection:

- edge-ws sends close_notify (or closes TCP): kosoku's side is closed once everything before
  it has been passed on, as if edge-ws had closed its TCP connection;
- edge-ws resets the connection, or sends a TLS alert / a record that does not decrypt: kosoku's
  side is reset (and the failure counted);
- kosoku closes (EOF): close_notify goes to edge-ws and TCP is half-closed; what edge-ws still
  sends is passed on until it closes (bounded by a timeout);
- kosoku resets: the TLS connection is reset too.

On SIGTERM / SIGINT it writes counters (connections, bytes each way, how each one ended) as
JSON to --stats and exits; the gate script prints them.
"""

import argparse
import asyncio
import json
import signal
import socket
import ssl
import sys
from collections import Counter

READ = 256 * 1024
DRAIN_TIMEOUT = 30.0

stats = Counter()


def split_addr(s):
    host, _, port = s.rpartition(":")
    return host, int(port)


def tls_context(ca, version):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if version == "1.2":
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    else:
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def abort(writer):
    if writer is not None and not writer.is_closing():
        writer.transport.abort()


class Relay:
    def __init__(self, args):
        self.args = args
        self.ctx = tls_context(args.ca, args.tls_version)
        self.target = split_addr(args.connect)

    async def handle(self, plain_r, plain_w):
        stats["connections"] += 1
        tcp_r = tcp_w = None
        try:
            tcp_r, tcp_w = await asyncio.open_connection(*self.target)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = self.ctx.wrap_bio(incoming, outgoing, server_side=False,
                                    server_hostname=self.args.server_name)
            await self.handshake(tls, incoming, outgoing, tcp_r, tcp_w)
            stats[f"negotiated {tls.version()} {tls.cipher()[0]}"] += 1
            up = asyncio.create_task(self.upstream(plain_r, tls, outgoing, tcp_w))
            await self.downstream(tcp_r, tls, incoming, outgoing, tcp_w, plain_w)
            # edge-ws is done: kosoku's side is closed (or was reset); stop reading it.
            up.cancel()
            try:
                await up
            except (asyncio.CancelledError, ConnectionError):
                pass
        except (ConnectionError, OSError, ssl.SSLError) as e:
            stats[f"relay failure: {type(e).__name__}"] += 1
            print(f"tls_relay: {type(e).__name__}: {e}", file=sys.stderr)
            abort(plain_w)
        finally:
            abort(tcp_w)
            if not plain_w.is_closing():
                plain_w.close()

    async def handshake(self, tls, incoming, outgoing, tcp_r, tcp_w):
        for _ in range(64):
            try:
                tls.do_handshake()
                tcp_w.write(outgoing.read())
                await tcp_w.drain()
                return
            except ssl.SSLWantReadError:
                tcp_w.write(outgoing.read())
                await tcp_w.drain()
                data = await tcp_r.read(READ)
                if not data:
                    raise ConnectionResetError("edge-ws closed during the TLS handshake")
                incoming.write(data)
        raise ssl.SSLError("TLS handshake did not complete in 64 flights")

    async def upstream(self, plain_r, tls, outgoing, tcp_w):
        """kosoku -> edge-ws: each read becomes TLS application data as it is."""
        while True:
            try:
                data = await plain_r.read(READ)
            except ConnectionError:
                stats["kosoku reset"] += 1
                abort(tcp_w)
                return
            if not data:
                break
            stats["bytes to edge-ws"] += len(data)
            tls.write(data)
            tcp_w.write(outgoing.read())
            await tcp_w.drain()
        # kosoku closed its side: close_notify, then half-close TCP; keep passing on replies.
        stats["kosoku closed first"] += 1
        try:
            tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # edge-ws's close_notify has not come yet: ours is queued regardless
        except ssl.SSLError:
            pass
        tcp_w.write(outgoing.read())
        if tcp_w.can_write_eof():
            tcp_w.write_eof()
        await tcp_w.drain()
        # Bounded: an edge-ws that never closes is cut off (downstream then sees EOF, counted).
        asyncio.get_running_loop().call_later(DRAIN_TIMEOUT, abort, tcp_w)

    async def downstream(self, tcp_r, tls, incoming, outgoing, tcp_w, plain_w):
        """edge-ws -> kosoku: decrypted as it arrives; ends with edge-ws's close."""
        while True:
            try:
                data = await tcp_r.read(READ)
            except ConnectionError:
                stats["edge-ws reset"] += 1
                abort(plain_w)
                return
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()
            out = []
            end = None
            while True:
                try:
                    chunk = tls.read(READ)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    end = "close_notify"
                    break
                except ssl.SSLEOFError:
                    end = "eof without close_notify"
                    break
                except ssl.SSLError as e:
                    end = f"TLS error {e.reason}"
                    break
                if not chunk:
                    end = "close_notify"
                    break
                out.append(chunk)
            # Anything the TLS layer owes edge-ws (a KeyUpdate answer) goes out now.
            pending = outgoing.read()
            if pending and not tcp_w.is_closing():
                tcp_w.write(pending)
            if out:
                n = sum(map(len, out))
                stats["bytes to kosoku"] += n
                plain_w.write(b"".join(out))
                try:
                    await plain_w.drain()
                except ConnectionError:
                    stats["kosoku reset"] += 1
                    abort(tcp_w)
                    return
            if end is None and not data:
                end = "eof without close_notify"
            if end is not None:
                stats[f"edge-ws closed: {end}"] += 1
                if end.startswith("TLS error"):
                    print(f"tls_relay: edge-ws connection ended with {end}", file=sys.stderr)
                    abort(plain_w)
                else:
                    # As a plain server closing TCP: kosoku sees EOF after the last byte.
                    if plain_w.can_write_eof():
                        plain_w.write_eof()
                    try:
                        await plain_w.drain()
                    except ConnectionError:
                        pass
                return


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True)
    ap.add_argument("--connect", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--server-name", default="localhost")
    ap.add_argument("--tls-version", choices=["1.2", "1.3"], default="1.3")
    ap.add_argument("--stats")
    args = ap.parse_args()
    relay = Relay(args)
    host, port = split_addr(args.listen)
    server = await asyncio.start_server(relay.handle, host, port, reuse_address=True,
                                        family=socket.AF_INET, limit=READ)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"tls_relay: listening on {args.listen} -> TLS {args.tls_version} {args.connect}", flush=True)
    async with server:
        await stop.wait()
    if args.stats:
        with open(args.stats, "w") as f:
            json.dump(dict(sorted(stats.items())), f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    asyncio.run(main())
