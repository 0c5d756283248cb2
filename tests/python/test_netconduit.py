"""The real netconduit client (netconduit==5.0.0 from PyPI, `import conduit`) against
`switchboard serve --netconduit-port 0`.

Run by scripts/test inside a virtual environment:
    SWITCHBOARD_BIN=target/debug/switchboard python tests/python/test_netconduit.py

It starts a hub with a password and netconduit's listener (its password hash accepted on
purpose), and checks: a netconduit client authenticates, lists the methods with
`rpc.call("listall")`, calls `sum` (a result, a validation error with its details, an
unknown method), joins a room and exchanges messages with the JS client (the one the
browser loads, under Node) in that room; a wrong password is
refused; hostile frames (bad magic, a huge length, a zlib bomb) are answered and
closed, and the hub serves the next client as before.
"""

import asyncio
import hashlib
import json
import os
import struct
import subprocess
import zlib

import msgpack
from conduit import Client, ClientDescriptor, data

TIMEOUT = 10
PASSWORD = "secret123"


def start_hub():
    binary = os.environ.get("SWITCHBOARD_BIN", "target/debug/switchboard")
    env = dict(os.environ, SWITCHBOARD_PASSWORD=PASSWORD)
    proc = subprocess.Popen(
        [binary, "serve", "--port", "0", "--netconduit-port", "0", "--netconduit-password-hash"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    ws_line = proc.stdout.readline()
    nc_line = proc.stdout.readline()
    ws_addr = ws_line.split("ws://")[1].split("/")[0]
    nc_addr = nc_line.split("tcp://")[1].split(",")[0].strip()
    host, port = nc_addr.rsplit(":", 1)
    return proc, ws_addr, (host, int(port))


def client(addr, password=PASSWORD):
    host, port = addr
    return Client(ClientDescriptor(
        server_host=host, server_port=port, password=password,
        reconnect_enabled=False, connect_timeout=TIMEOUT,
    ))


class JsPeer:
    """The JS client (clients/js/switchboard.js, what the browser loads) under Node,
    in a room: it prints the chats it hears and sends the ones written to it."""

    def __init__(self, proc):
        self.proc = proc

    @classmethod
    async def start(cls, url, room):
        script = os.path.join(os.path.dirname(__file__), "js_peer.mjs")
        proc = await asyncio.create_subprocess_exec(
            "node", "--experimental-websocket", script, url, PASSWORD, room,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        me = cls(proc)
        ready = await me._line()
        assert "ready" in ready, ready
        return me

    async def _line(self):
        line = await asyncio.wait_for(self.proc.stdout.readline(), TIMEOUT)
        assert line, "the JS peer stopped"
        return json.loads(line)

    async def send(self, command):
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()

    async def heard(self):
        return await self._line()

    async def stop(self):
        self.proc.stdin.close()
        await asyncio.wait_for(self.proc.wait(), TIMEOUT)


def frame(kind, payload=None, correlation=0, flags=0, length=None, magic=b"CNDT"):
    body = b"" if payload is None else msgpack.packb(payload, use_bin_type=True)
    if flags & 1:
        body = payload  # already compressed bytes
    size = len(body) if length is None else length
    return struct.pack(">4sHHHHIQQ", magic, 0x0100, kind, flags, 0, size, correlation, 0) + body


async def read_frame(reader):
    head = await asyncio.wait_for(reader.readexactly(32), TIMEOUT)
    _, _, kind, flags, _, size, correlation, _ = struct.unpack(">4sHHHHIQQ", head)
    body = await asyncio.wait_for(reader.readexactly(size), TIMEOUT)
    return kind, correlation, (msgpack.unpackb(body, raw=False) if body else None)


async def until_closed(reader):
    """Waits for the server to close the connection (EOF; a timeout if it never does)."""
    await asyncio.wait_for(reader.read(), TIMEOUT)


async def raw_authenticated(addr):
    reader, writer = await asyncio.open_connection(*addr)
    digest = hashlib.sha256(PASSWORD.encode()).hexdigest()
    writer.write(frame(0x07, {"password_hash": digest, "client_info": {"name": "raw"}}))
    kind, _, payload = await read_frame(reader)
    assert kind == 0x08, (kind, payload)
    return reader, writer


async def scenario(ws_addr, nc_addr):
    # Connect and authenticate: the session token and the hub's info come back.
    nc = client(nc_addr)
    inbox = asyncio.Queue()

    @nc.on("chat")
    async def on_chat(msg):
        await inbox.put(msg)

    assert await nc.connect(), "the netconduit client connects"
    assert nc.session_token, "a session token"
    assert nc.server_info["client_id"], nc.server_info

    # Methods, as netconduit lists them.
    methods = await nc.rpc.call("listall")
    names = [m["name"] for m in methods["data"]["methods"]]
    assert "sum" in names and "listall" in names, names
    assert methods["data"]["count"] == len(names)
    # A call, a validation error with its fields, an unknown method.
    ok = await nc.rpc.call("sum", args=data(numbers=[1, 2, 3.5]))
    assert ok == {"success": True, "data": 6.5}, ok
    bad = await nc.rpc.call("sum", args=data(numbers="nope"))
    assert bad["success"] is False and bad["code"] == 2000, bad
    assert bad["details"]["errors"][0]["field"] == "numbers", bad
    missing = await nc.rpc.call("no_such_method")
    assert missing["success"] is False and missing["code"] == 4000, missing

    # A room shared with the JS client (the browser's): messages both ways.
    web = await JsPeer.start(f"ws://{ws_addr}/ws", "general")
    await nc.send("join_room", {"room_id": "general"})
    # A call answered after the join: the join (earlier on the same connection) is done.
    await nc.rpc.call("sum", args=data(numbers=[0]))
    await web.send({"room": "general", "payload": {"text": "hello from the web"}})
    got = await asyncio.wait_for(inbox.get(), TIMEOUT)
    assert got == {"text": "hello from the web"}, got
    await nc.send("chat", {"text": "hello from netconduit"})
    heard = await web.heard()
    assert heard["payload"] == {"text": "hello from netconduit"}, heard
    assert heard["from"] == nc.server_info["client_id"], heard
    await web.stop()
    await nc.disconnect()

    # A wrong password is refused.
    wrong = client(nc_addr, password="not-the-password")
    assert not await wrong.connect(), "a wrong password is refused"

    # Hostile frames: bad magic before authenticating.
    reader, writer = await asyncio.open_connection(*nc_addr)
    writer.write(frame(0x07, {"password_hash": "x"}, magic=b"EVIL"))
    kind, _, payload = await read_frame(reader)
    assert kind == 0x09 and "magic" in payload["reason"], payload
    await until_closed(reader)
    writer.close()

    # A huge length in the header, after authenticating: an error, then the end.
    reader, writer = await raw_authenticated(nc_addr)
    writer.write(frame(0x01, length=2**31))
    kind, _, payload = await read_frame(reader)
    assert kind == 0x01 and payload["type"] == "error", payload
    assert payload["data"]["code"] == "MESSAGE_TOO_LARGE", payload
    await until_closed(reader)
    writer.close()

    # A zlib bomb: 64 MiB of zeros in a few KiB.
    bomb = zlib.compress(b"\0" * (64 << 20), 9)
    reader, writer = await raw_authenticated(nc_addr)
    writer.write(frame(0x01, bomb, flags=1))
    kind, _, payload = await read_frame(reader)
    assert payload["data"]["code"] == "MESSAGE_TOO_LARGE", payload
    await until_closed(reader)
    writer.close()

    # Wrong shapes are answered, and the connection stays.
    reader, writer = await raw_authenticated(nc_addr)
    writer.write(frame(0x01, [1, 2, 3]))
    kind, _, payload = await read_frame(reader)
    assert payload["data"]["code"] == "INVALID_PAYLOAD", payload
    writer.write(frame(0x05))
    kind, _, _ = await read_frame(reader)
    assert kind == 0x06, "a ping is answered after a bad message"
    writer.close()

    # The hub serves the next client as before.
    again = client(nc_addr)
    assert await again.connect()
    assert (await again.rpc.call("sum", args=data(numbers=[2])))["data"] == 2
    await again.disconnect()


async def main():
    proc, ws_addr, nc_addr = start_hub()
    try:
        await scenario(ws_addr, nc_addr)
    finally:
        proc.terminate()
        proc.wait(timeout=TIMEOUT)
    print("netconduit 5.0.0 against switchboard: all checks passed")


if __name__ == "__main__":
    asyncio.run(main())
