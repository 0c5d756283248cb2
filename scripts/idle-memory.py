#!/usr/bin/env python3
"""Rough idle-memory check until `switchboard bench idle` exists.

Starts the release hub on a free loopback port, opens N WebSocket connections that each
join a room and then stay idle, and prints the hub's RSS growth per connection.
Usage: scripts/idle-memory.py [N]   (needs `pip install websockets` and a release build)
"""
import asyncio, json, os, re, subprocess, sys

N = int(sys.argv[1]) if len(sys.argv) > 1 else 5000

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

async def main():
    import websockets
    hub = subprocess.Popen(["target/release/switchboard", "serve", "--port", "0", "--max-connections", str(N + 10)],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        addr = hub.stdout.readline().split("ws://")[1].split("/")[0]
        url = f"ws://{addr}/ws"
        warm = await websockets.connect(url)
        await warm.recv()
        before = rss_kib(hub.pid)
        conns = []
        for i in range(N):
            ws = await websockets.connect(url, max_size=2**16, ping_interval=None)
            await ws.recv()  # connected
            await ws.send(json.dumps({"type": "join_room", "ref": "j", "payload": {"room_id": f"room{i % 100}"}}))
            while json.loads(await ws.recv())["type"] != "ack":
                pass
            conns.append(ws)
        await asyncio.sleep(1)  # let allocator settle; this is a measurement, not a test
        after = rss_kib(hub.pid)
        print(f"connections={N} rss_before_kib={before} rss_after_kib={after} "
              f"per_connection_bytes={(after - before) * 1024 / N:.0f}")
        for ws in conns:
            await ws.close()
    finally:
        hub.terminate()
        hub.wait()

asyncio.run(main())
