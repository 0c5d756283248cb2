"""The Python client against the real hub: rooms, RPC and typed errors, request
timeouts, reconnect through a proxy that cuts the connection, handlers removed, and a
clean shutdown. Each test runs its own event loop (`asyncio.run`)."""

import asyncio

import pytest
from conftest import TIMEOUT, Proxy

from switchboard import (
    Client,
    ConnectError,
    Message,
    NotConnectedError,
    RemoteError,
    RequestTimeout,
)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def until(queue, predicate=lambda m: True):
    while True:
        item = await asyncio.wait_for(queue.get(), TIMEOUT)
        if predicate(item):
            return item


def test_rooms_reach_their_members_and_only_them(hub):
    async def scenario():
        url = f"ws://{hub}/ws"
        async with await Client.connect(url) as a, await Client.connect(url) as b, \
                await Client.connect(url) as c:
            in_room, by_type, outside = asyncio.Queue(), asyncio.Queue(), asyncio.Queue()
            b.on_room_message("general", in_room.put_nowait)
            b.on("chat", by_type.put_nowait)
            c.on("chat", outside.put_nowait)
            await a.join("general")
            await b.join("general")
            assert b.rooms == ["general"] and b.is_in_room("general")
            await a.send("chat", {"text": "hi"}, room="general")
            msg = await until(by_type)
            assert msg == Message(type="chat", payload={"text": "hi"}, from_id=a.id,
                                  room="general", offset=msg.offset)
            assert (await until(in_room, lambda m: m.type == "chat")).payload == {"text": "hi"}
            # c is not in the room: a direct message is the first chat it gets.
            await a.send("chat", {"text": "just you"}, to=c.id)
            assert (await until(outside)).payload == {"text": "just you"}
            await b.leave("general")
            assert b.rooms == []
            await a.send("chat", {"text": "after"}, room="general")
            await a.send("chat", {"text": "direct"}, to=b.id)
            assert (await until(by_type)).payload == {"text": "direct"}, "nothing from the room"

    run(scenario())


def test_rpc_results_and_typed_errors(hub):
    async def scenario():
        async with await Client.connect(f"ws://{hub}/ws") as client:
            assert await client.call("sum", {"numbers": [1, 2, 3.5]}) == 6.5
            assert await client.call("sum", [[1, 2]]) == 3
            assert await client.rpc.call("sum", args={"numbers": [4]}) == 4
            with pytest.raises(RemoteError) as bad:
                await client.call("sum", {"numbers": "x"})
            assert bad.value.code == "INVALID_PARAMS"
            assert bad.value.details["errors"][0]["path"] == "numbers"
            with pytest.raises(RemoteError) as unknown:
                await client.call("no_such_method")
            assert unknown.value.code == "UNKNOWN_METHOD"
            methods = await client.rpc.call("listall")
            assert "sum" in [m["name"] for m in methods]
            # A request is answered with its ack's result: here, how many it reached.
            answer = await client.request("note", {"x": 1}, to=client.id, timeout=5)
            assert answer == {"delivered": 1}, answer

    run(scenario())


def test_a_messagepack_client_calls_and_shares_a_room_with_a_json_client(hub):
    async def scenario():
        url = f"ws://{hub}/ws"
        async with await Client.connect(url, msgpack=True) as packed, \
                await Client.connect(url) as plain:
            assert packed.msgpack and not plain.msgpack
            assert await packed.call("sum", {"numbers": [1, 2, 3.5]}) == 6.5
            with pytest.raises(RemoteError) as bad:
                await packed.call("sum", {"numbers": "x"})
            assert bad.value.code == "INVALID_PARAMS"
            heard = asyncio.Queue()
            plain.on("chat", heard.put_nowait)
            await packed.join("room")
            await plain.join("room")
            payload = {"text": "héllo ✓", "n": -7, "f": 0.1, "nested": {"l": [True, None]}}
            await packed.send("chat", payload, room="room")
            msg = await asyncio.wait_for(heard.get(), TIMEOUT)
            assert msg.payload == payload
            assert msg.from_id == packed.id

    run(scenario())


def test_a_request_without_an_answer_times_out_and_the_client_goes_on(hub):
    async def scenario():
        proxy = Proxy(hub)
        url = f"ws://{await proxy.start()}/ws"
        client = await Client.connect(url)
        proxy.hold()  # the server's answers stop on the way
        with pytest.raises(RequestTimeout):
            await client.call("sum", {"numbers": [1]}, timeout=0.3)
        proxy.release()
        assert await client.call("sum", {"numbers": [2]}) == 2
        await client.close()
        await proxy.stop()

    run(scenario())


def test_a_cut_connection_reconnects_resumes_and_delivers_what_was_missed(hub):
    async def scenario():
        proxy = Proxy(hub)
        url = f"ws://{await proxy.start()}/ws"
        client = await Client.connect(url, reconnect_delay=0.05)
        sender = await Client.connect(f"ws://{hub}/ws")
        states, got, resumed = asyncio.Queue(), asyncio.Queue(), asyncio.Queue()
        client.on_state(states.put_nowait)
        client.on_resume(resumed.put_nowait)
        client.on("note", got.put_nowait)
        await client.join("r")
        await sender.join("r")
        me = client.id
        proxy.hold()
        proxy.cut()
        await until(states, lambda s: s == "reconnecting")
        # Sent while it is away: delivered after the resume, once, in order.
        for i in range(5):
            await sender.send("note", {"i": i}, room="r")
        await sender.send("note", {"i": 5}, to=me)
        proxy.release()
        await until(states, lambda s: s == "open")
        outcome = await until(resumed)
        assert outcome == {"resumed": True, "recovered": True}, outcome
        assert client.id == me and client.rooms == ["r"]
        seen = [await until(got) for _ in range(6)]
        # Each stream in order (the room's; the client's own direct messages).
        assert [m.payload["i"] for m in seen if m.room == "r"] == [0, 1, 2, 3, 4], seen
        assert [m.payload["i"] for m in seen if m.room is None] == [5], seen
        # And sends after the reconnect work.
        await sender.send("note", {"i": 6}, room="r")
        assert (await until(got)).payload == {"i": 6}
        assert proxy.accepted == 2
        await client.close()
        await sender.close()
        await proxy.stop()

    run(scenario())


def test_a_removed_handler_is_not_called_again(hub):
    async def scenario():
        url = f"ws://{hub}/ws"
        async with await Client.connect(url) as a, await Client.connect(url) as b:
            first, second = [], asyncio.Queue()
            sub = b.on("ping_pong", first.append)
            b.on("ping_pong", second.put_nowait)
            await a.send("ping_pong", {"n": 1}, to=b.id)
            await until(second)
            assert sub.remove() and not sub.remove()
            await a.send("ping_pong", {"n": 2}, to=b.id)
            assert (await until(second)).payload == {"n": 2}
            assert [m.payload for m in first] == [{"n": 1}]

    run(scenario())


def test_messages_iterates_until_close_and_close_leaves_no_task(hub):
    async def scenario():
        url = f"ws://{hub}/ws"
        before = asyncio.all_tasks()
        a = await Client.connect(url)
        b = await Client.connect(url)
        assert len(asyncio.all_tasks() - before) == 4, "each client: its reader and its handlers"
        stream = b.messages()
        for i in range(3):
            await a.send("m", {"i": i}, to=b.id)
        got = []
        async for msg in stream:
            if msg.type == "m":
                got.append(msg.payload["i"])
            if len(got) == 3:
                break
        assert got == [0, 1, 2]
        await a.close()
        await b.close()
        assert a.state == "closed" and not a.is_connected
        with pytest.raises(NotConnectedError):
            await a.send("m", {})
        left = asyncio.all_tasks() - before
        assert left == set(), left

    run(scenario())


def test_a_wrong_address_and_a_refused_password_raise_connect_error(hub):
    async def scenario():
        with pytest.raises(ConnectError):
            await Client.connect("ws://127.0.0.1:1/ws", auto_reconnect=False, connect_timeout=2)
        with pytest.raises(ConnectError):
            await Client.connect("not a url")

    run(scenario())


def test_a_slow_handler_never_stalls_the_connection(hub):
    """A handler stuck on the loop while 2,000 messages arrive: the Rust side keeps
    reading (a call made meanwhile is answered, and its answer comes behind all of them
    on the wire), and every message reaches the handler, in order, once released."""

    async def scenario():
        url = f"ws://{hub}/ws"
        async with await Client.connect(url) as receiver, await Client.connect(url) as sender:
            gate, all_in = asyncio.Event(), asyncio.Event()
            got = []

            @receiver.on("m")
            async def slow(msg):
                await gate.wait()  # stuck until released
                got.append(msg.payload["i"])
                if len(got) == 2000:
                    all_in.set()

            for i in range(2000):
                await sender.send("m", {"i": i}, to=receiver.id)
            # The sender's call is answered once the server has relayed all 2,000.
            assert await sender.call("sum", {"numbers": [0]}) == 0
            # The receiver's pump is stuck in the handler; its connection is not.
            assert await receiver.call("sum", {"numbers": [1, 1]}) == 2
            assert got == []
            gate.set()
            await asyncio.wait_for(all_in.wait(), TIMEOUT)
            assert got == list(range(2000))
            assert receiver.is_connected and receiver.dropped == 0

    run(scenario())


def test_a_program_exits_cleanly_right_after_its_last_answer(hub):
    """The interpreter's exit never races the client's threads: they never call into
    Python (an earlier design crashed about one exit in five, in a thread completing
    the last awaited call while the interpreter finalized)."""
    import subprocess
    import sys

    program = f"""
import asyncio
from switchboard import Client

async def main():
    async with await Client.connect("ws://{hub}/ws") as client:
        await client.call("sum", {{"numbers": [1]}})

asyncio.run(main())
"""
    for _ in range(25):
        done = subprocess.run([sys.executable, "-c", program], capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 0, done.stderr
