"""The Python client against the `websockets` library doing the same by hand.

    SWITCHBOARD_BIN=target/release/switchboard python clients/python/bench.py [rounds]

Starts a hub; per round and per client, in turn: messages per second one client
receives (a `websockets` sender pushes 20,000 direct messages at it), and sequential
RPC calls per second (`sum`, 5,000 calls). Prints a Markdown table: each round, then
the medians.
"""

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

import websockets

from switchboard import Client

MESSAGES = 20_000
CALLS = 5_000


def start_hub():
    binary = os.environ.get("SWITCHBOARD_BIN", "target/release/switchboard")
    proc = subprocess.Popen([binary, "serve", "--port", "0", "--rate-limit", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    addr = proc.stdout.readline().split("ws://")[1].split("/")[0]
    return proc, f"ws://{addr}/ws"


async def raw_connect(url):
    ws = await websockets.connect(url, max_queue=None)
    hello = json.loads(await ws.recv())
    return ws, hello["payload"]["client_id"]


async def blast(url, to):
    ws, _ = await raw_connect(url)
    for i in range(MESSAGES):
        await ws.send(json.dumps({"type": "m", "to": to, "payload": {"i": i}}))
    return ws


async def receive_switchboard(url):
    client = await Client.connect(url)
    done = asyncio.Event()
    count = 0

    def on_m(msg):
        nonlocal count
        count += 1
        if count == MESSAGES:
            done.set()

    client.on("m", on_m)
    start = time.perf_counter()
    sender = await blast(url, client.id)
    await asyncio.wait_for(done.wait(), 120)
    rate = MESSAGES / (time.perf_counter() - start)
    await sender.close()
    await client.close()
    return rate


async def receive_websockets(url):
    ws, me = await raw_connect(url)
    start = time.perf_counter()
    sender_task = asyncio.create_task(blast(url, me))
    count = 0
    while count < MESSAGES:
        msg = json.loads(await ws.recv())
        if msg.get("type") == "m":
            count += 1
    rate = MESSAGES / (time.perf_counter() - start)
    await (await sender_task).close()
    await ws.close()
    return rate


async def calls_switchboard(url):
    client = await Client.connect(url)
    start = time.perf_counter()
    for i in range(CALLS):
        assert await client.call("sum", {"numbers": [i, 1]}) == i + 1
    rate = CALLS / (time.perf_counter() - start)
    await client.close()
    return rate


async def calls_websockets(url):
    ws, _ = await raw_connect(url)
    start = time.perf_counter()
    for i in range(CALLS):
        ref = str(i)
        await ws.send(json.dumps({"type": "rpc", "ref": ref,
                                  "payload": {"method": "sum", "params": {"numbers": [i, 1]}}}))
        while True:
            msg = json.loads(await ws.recv())
            if msg.get("type") == "ack" and msg["payload"].get("ref") == ref:
                assert msg["payload"]["result"] == i + 1
                break
    rate = CALLS / (time.perf_counter() - start)
    await ws.close()
    return rate


async def main(rounds):
    proc, url = start_hub()
    rows = {k: [] for k in ("recv switchboard", "recv websockets",
                            "rpc switchboard", "rpc websockets")}
    try:
        for _ in range(rounds):
            rows["recv switchboard"].append(await receive_switchboard(url))
            rows["recv websockets"].append(await receive_websockets(url))
            rows["rpc switchboard"].append(await calls_switchboard(url))
            rows["rpc websockets"].append(await calls_websockets(url))
    finally:
        proc.terminate()
        proc.wait()
    print("| client | " + " | ".join(f"round {i + 1}" for i in range(rounds)) + " | median |")
    print("| --- " * (rounds + 2) + "|")
    for name, values in rows.items():
        cells = " | ".join(f"{v:,.0f}/s" for v in values)
        print(f"| {name} | {cells} | {statistics.median(values):,.0f}/s |")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
