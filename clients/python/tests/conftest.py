"""The hub these tests talk to (`switchboard serve --port 0`), and a TCP proxy in front
of it that can cut or hold every connection."""

import asyncio
import os
import subprocess

import pytest

TIMEOUT = 10


@pytest.fixture(scope="session")
def hub():
    """The hub's address (host:port)."""
    binary = os.environ.get("SWITCHBOARD_BIN", "target/debug/switchboard")
    proc = subprocess.Popen(
        [binary, "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline()
    addr = line.split("ws://")[1].split("/")[0]
    yield addr
    proc.terminate()
    proc.wait(timeout=TIMEOUT)
    proc.stdout.close()


class Proxy:
    """Forwards TCP to the hub; `cut()` closes every connection, `hold()` stops
    forwarding the server's bytes until `release()`."""

    def __init__(self, target):
        self.host, self.port = target.rsplit(":", 1)
        self.links = []
        self.accepted = 0
        self.held = asyncio.Event()
        self.held.set()

    async def start(self):
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _link(self, reader, writer):
        self.accepted += 1
        up_r, up_w = await asyncio.open_connection(self.host, int(self.port))
        self.links.append((writer, up_w))

        async def pipe(r, w, gated):
            try:
                while data := await r.read(65536):
                    if gated:
                        await self.held.wait()
                    w.write(data)
                    await w.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_w, False), pipe(up_r, writer, True))

    def cut(self):
        for down, up in self.links:
            down.transport.abort()
            up.transport.abort()
        self.links.clear()

    def hold(self):
        self.held.clear()

    def release(self):
        self.held.set()

    async def stop(self):
        self.release()
        self.cut()
        self.server.close()
        await self.server.wait_closed()
