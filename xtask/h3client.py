"""An independent HTTP/3 client for `cargo xtask h3check`, built on aioquic.

Usage: h3client.py PORT [--upstream NAME]

Opens one QUIC connection to 127.0.0.1:PORT with SNI a.test (the certificate is self-signed,
so it is not verified), runs a few requests through the proxy's quic-ingress listener, prints
one line per check and, last, `h3check: N passed, N failed`. Exits 1 if any check failed.
"""

import argparse
import asyncio
import json
import ssl
import sys
import time
from urllib.parse import urlsplit

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, StreamReset

SNI = "a.test"
# Longest a single check may take (the 20 concurrent requests count as one check).
CHECK_TIMEOUT = 30.0
ECHO_SIZE = 2 * 1024 * 1024
ECHO_CHUNK = 256 * 1024
DOWNLOAD_SIZE = 3 * 1024 * 1024
CONCURRENT = 20


class Response:
    def __init__(self):
        self.status = None
        self.headers = {}
        self.body = bytearray()


class H3Client(QuicConnectionProtocol):
    """A QUIC connection speaking HTTP/3: `request` sends one and waits for its whole answer."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.alpn = None
        # stream id -> (future resolved when the response ends, the response so far)
        self.pending = {}

    async def request(self, method, url, body_chunks=()):
        parts = urlsplit(url)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        chunks = list(body_chunks)
        headers = [
            (b":method", method.encode()),
            (b":scheme", parts.scheme.encode()),
            (b":authority", parts.netloc.encode()),
            (b":path", path.encode()),
            (b"user-agent", b"portcullis-h3check"),
        ]
        if chunks:
            headers.append((b"content-length", str(sum(map(len, chunks))).encode()))

        stream_id = self._quic.get_next_available_stream_id()
        done = asyncio.get_running_loop().create_future()
        self.pending[stream_id] = (done, Response())
        self.h3.send_headers(stream_id, headers, end_stream=not chunks)
        self.transmit()
        for i, chunk in enumerate(chunks):
            # One DATA frame per chunk, each handed to the network before the next is queued.
            self.h3.send_data(stream_id, chunk, end_stream=i == len(chunks) - 1)
            self.transmit()
            await asyncio.sleep(0)
        return await done

    def quic_event_received(self, event):
        if isinstance(event, HandshakeCompleted):
            self.alpn = event.alpn_protocol
        elif isinstance(event, StreamReset):
            self._fail(event.stream_id, f"stream reset by the server (error {event.error_code:#x})")
        elif isinstance(event, ConnectionTerminated):
            for stream_id in list(self.pending):
                self._fail(stream_id, f"connection closed (error {event.error_code:#x}: {event.reason_phrase})")

        for h3_event in self.h3.handle_event(event):
            entry = self.pending.get(getattr(h3_event, "stream_id", None))
            if entry is None:
                continue
            done, response = entry
            if isinstance(h3_event, HeadersReceived):
                # The first HEADERS frame is the response head; a later one would be trailers.
                if response.status is None:
                    response.headers = {k.decode(): v.decode() for k, v in h3_event.headers}
                    response.status = int(response.headers.get(":status", "0"))
            elif isinstance(h3_event, DataReceived):
                response.body += h3_event.data
            else:
                continue
            if h3_event.stream_ended:
                del self.pending[h3_event.stream_id]
                if not done.done():
                    done.set_result(response)

    def _fail(self, stream_id, reason):
        entry = self.pending.pop(stream_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(ConnectionError(reason))


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


async def check_root(client, upstream):
    r = await client.request("GET", "https://a.test/")
    expect(r.status == 200, f"status {r.status}, want 200")
    doc = json.loads(r.body)
    expect(doc.get("upstream") == upstream, f"upstream {doc.get('upstream')!r}, want {upstream!r}")
    proto = doc.get("headers", {}).get("x-forwarded-proto")
    expect(proto == "https", f"x-forwarded-proto {proto!r}, want 'https'")
    return f"200 from {upstream!r}, x-forwarded-proto https"


async def check_no_route(client, _upstream):
    r = await client.request("GET", "https://c.test/")
    expect(r.status == 404, f"status {r.status}, want 404")
    return "404"


async def check_echo(client, _upstream):
    pattern = bytes(range(251))
    upload = (pattern * (ECHO_SIZE // len(pattern) + 1))[:ECHO_SIZE]
    chunks = [upload[i : i + ECHO_CHUNK] for i in range(0, ECHO_SIZE, ECHO_CHUNK)]
    r = await client.request("POST", "https://a.test/echo", chunks)
    expect(r.status == 200, f"status {r.status}, want 200")
    expect(len(r.body) == ECHO_SIZE, f"{len(r.body)} bytes back, want {ECHO_SIZE}")
    expect(r.body == upload, "the bytes that came back differ from the ones sent")
    return f"{ECHO_SIZE} bytes sent in {len(chunks)} chunks, the same bytes back"


async def check_download(client, _upstream):
    r = await client.request("GET", f"https://a.test/bytes?n={DOWNLOAD_SIZE}")
    expect(r.status == 200, f"status {r.status}, want 200")
    expect(len(r.body) == DOWNLOAD_SIZE, f"{len(r.body)} bytes, want {DOWNLOAD_SIZE}")
    return f"{DOWNLOAD_SIZE} bytes"


async def check_concurrent(client, _upstream):
    # Each answer takes 100 ms upstream, so all of them are in flight at once.
    start = time.monotonic()
    responses = await asyncio.gather(
        *(client.request("GET", f"https://a.test/delay?ms=100&i={i}") for i in range(CONCURRENT))
    )
    statuses = [r.status for r in responses]
    expect(all(s == 200 for s in statuses), f"statuses {statuses}, want all 200")
    return f"{CONCURRENT} x 200 in {time.monotonic() - start:.2f} s"


async def check_alpn(client, _upstream):
    expect(client.alpn == "h3", f"ALPN {client.alpn!r}, want 'h3'")
    return "h3"


CHECKS = [
    ("GET https://a.test/", check_root),
    ("GET https://c.test/ (no route)", check_no_route),
    ("POST https://a.test/echo", check_echo),
    (f"GET https://a.test/bytes?n={DOWNLOAD_SIZE}", check_download),
    (f"{CONCURRENT} concurrent GETs on one connection", check_concurrent),
    ("ALPN", check_alpn),
]


async def run(port, upstream):
    config = QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, verify_mode=ssl.CERT_NONE, server_name=SNI, idle_timeout=CHECK_TIMEOUT
    )
    passed = failed = 0
    try:
        async with connect("127.0.0.1", port, configuration=config, create_protocol=H3Client) as client:
            for name, check in CHECKS:
                try:
                    detail = await asyncio.wait_for(check(client, upstream), CHECK_TIMEOUT)
                except Exception as e:  # one failed check must not stop the others
                    failed += 1
                    print(f"FAIL {name}: {e!r}", flush=True)
                else:
                    passed += 1
                    print(f"ok   {name}: {detail}", flush=True)
    except Exception as e:  # no connection (or it broke on close): every check not passed failed
        print(f"FAIL QUIC connection to 127.0.0.1:{port}: {e!r}", flush=True)
        failed = len(CHECKS) - passed
    return passed, failed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int, help="the proxy's UDP port (the same as its https port)")
    parser.add_argument("--upstream", default="demo", help="the demo upstream's --name")
    args = parser.parse_args()
    passed, failed = asyncio.run(run(args.port, args.upstream))
    print(f"h3check: {passed} passed, {failed} failed", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
