"""The real datadivr client (datadivr==0.2.4 from PyPI) against `switchboard serve`.

Run by scripts/test inside a virtual environment:
    SWITCHBOARD_BIN=target/debug/switchboard python tests/python/test_datadivr.py

It starts a hub with no flags (`switchboard serve`) on a free port; datadivr clients
connect to the URL datadivr's docs use, ws://host:port/ws, unchanged, and are recognised
by their first frame (their CLI_HELLO) before the hub sends anything. It checks: the built-in sum_event, messages to
"all" (sender included), to "others" (the default) and to one client id, who receives
what, and a native switchboard client in the same conversation.
"""

import asyncio
import json
import os
import subprocess
import sys

import websockets
from datadivr.transport.client import WebSocketClient
from datadivr.transport.models import WebSocketMessage

TIMEOUT = 10


class RecordingClient(WebSocketClient):
    """datadivr's client, recording what it receives instead of printing it."""

    def __init__(self, uri):
        super().__init__(uri)
        self.inbox = asyncio.Queue()

    async def handle_event(self, event_data, websocket):
        # The same validation datadivr's own handlers get.
        await self.inbox.put(WebSocketMessage.model_validate(event_data))

    async def until(self, predicate):
        """Messages up to and including the first that matches."""
        got = []
        while True:
            msg = await asyncio.wait_for(self.inbox.get(), TIMEOUT)
            got.append(msg)
            if predicate(msg):
                return got


def start_hub():
    binary = os.environ.get("SWITCHBOARD_BIN", "target/debug/switchboard")
    proc = subprocess.Popen(
        [binary, "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline()
    addr = line.split("ws://")[1].split("/")[0]
    return proc, addr


async def marker(client, tag):
    """Sends a marker to everyone; returns a predicate that spots it."""
    await client.send_message(payload=None, event_name="marker", msg=tag, to="all")
    return lambda m: m.event_name == "marker" and m.message == tag


async def main():
    proc, addr = start_hub()
    try:
        await scenario(f"ws://{addr}/ws")
    finally:
        proc.terminate()
        proc.wait(timeout=TIMEOUT)
    print("datadivr 0.2.4 against switchboard: all checks passed")


async def scenario(url):
    a, b, c = RecordingClient(url), RecordingClient(url), RecordingClient(url)
    for client in (a, b, c):
        await client.connect()  # sends CLI_HELLO to the others, as datadivr does
    tasks = [asyncio.create_task(x.receive_messages()) for x in (a, b, c)]

    # Learn the ids the server gave: each client says hello to all.
    ids = {}
    for name, client in (("a", a), ("b", b), ("c", c)):
        await client.send_message(payload={"name": name}, event_name="iam", to="all")
        got = await client.until(lambda m: m.event_name == "iam" and m.payload == {"name": name})
        ids[name] = got[-1].from_id
    assert len(set(ids.values())) == 3, ids
    done = await marker(a, "setup")
    for client in (a, b, c):
        await client.until(done)

    # The built-in sum_event: the answer goes to the sender only.
    await a.send_message(payload={"numbers": [391, 29]}, event_name="sum_event")
    got = await a.until(lambda m: m.event_name == "sum_handler_result")
    assert got[-1].payload == 420.0, got[-1]
    assert got[-1].from_id == "server"
    done = await marker(a, "after-sum")
    for client in (b, c):
        got = await client.until(done)
        assert [m.event_name for m in got] == ["marker"], got

    # A bad payload is an error event with the reason in `message`.
    await a.send_message(payload={"numbers": "many"}, event_name="sum_event")
    got = await a.until(lambda m: m.event_name == "error")
    assert "INVALID_PAYLOAD" in got[-1].message, got[-1]

    # to "all": everyone, the sender included; from_id is the server's stamp.
    await b.send_message(payload=None, event_name="msg", msg="hello all", to="all")
    for client in (a, b, c):
        got = await client.until(lambda m: m.event_name == "msg")
        assert got[-1].message == "hello all"
        assert got[-1].from_id == ids["b"]

    # to "others" (the default): everyone but the sender.
    await b.send_message(payload={"k": 1}, event_name="news")
    done = await marker(b, "after-others")
    for client, expected in ((a, ["news", "marker"]), (b, ["marker"]), (c, ["news", "marker"])):
        got = await client.until(done)
        assert [m.event_name for m in got] == expected, (expected, got)
        if "news" in expected:
            assert got[0].payload == {"k": 1} and got[0].from_id == ids["b"]

    # to one client id: only that client.
    await c.send_message(payload=None, event_name="dm", msg="just you", to=ids["a"])
    done = await marker(c, "after-dm")
    for client, expected in ((a, ["dm", "marker"]), (b, ["marker"]), (c, ["marker"])):
        got = await client.until(done)
        assert [m.event_name for m in got] == expected, (expected, got)
    # ... and a forged from_id is overwritten.
    await c.websocket.send(json.dumps({"event_name": "dm", "to": ids["a"], "from_id": ids["b"], "message": "forged?"}))
    got = await a.until(lambda m: m.event_name == "dm")
    assert got[-1].from_id == ids["c"], got[-1]

    # A native switchboard client in the same conversation, at the same URL: it sends
    # nothing first, so it gets `connected` once the hub has waited for a first frame.
    async with websockets.connect(url) as native:
        hello = json.loads(await asyncio.wait_for(native.recv(), TIMEOUT))
        assert hello["type"] == "connected"
        native_id = hello["payload"]["client_id"]
        await a.send_message(payload=None, event_name="msg", msg="hi native", to="others")
        while True:
            env = json.loads(await asyncio.wait_for(native.recv(), TIMEOUT))
            if env["type"] == "msg":
                break
        assert env["payload"] == {"message": "hi native"} and env["from"] == ids["a"], env
        await native.send(json.dumps({"type": "msg", "to": "all", "payload": {"message": "hi datadivr"}}))
        for client in (a, b, c):
            got = await client.until(lambda m: m.event_name == "msg" and m.message == "hi datadivr")
            assert got[-1].from_id == native_id

    for client in (a, b, c):
        await client.disconnect()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except AssertionError as e:
        print(f"FAILED: {e!r}", file=sys.stderr)
        raise
