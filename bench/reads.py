"""Room reads against a running edge (bench/reads.sh): fills `lobby` with 2 000 messages, then
reads `/events` pages (500 events from a random point) with 16 clients for 10 s, then joins it 20
times over WebSocket with since=0 (a catch-up of the whole room each). Prints requests/s and
latency percentiles, the edge's CPU seconds, and the JetStream API requests per read (from the
server's /jsz)."""

import asyncio
import json
import random
import sys
import time

import aiohttp

BASE, MON, PID = sys.argv[1], sys.argv[2], int(sys.argv[3])
MESSAGES, CLIENTS, SECONDS, JOINS = 2000, 16, 10, 20


def cpu_seconds():
    with open(f"/proc/{PID}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1000


async def api_total(s):
    # The JetStream API requests every server of the cluster (or the single one) counted: on a
    # cluster a consumer's creation is handled by the meta leader, its other calls elsewhere.
    total = 0
    for mon in MON.split(","):
        async with s.get(f"{mon}/jsz") as r:
            total += (await r.json())["api"]["total"]
    return total


async def main():
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{BASE}/api/auth/guest", json={"user": "reader"}) as r:
            token = (await r.json())["token"]
        auth = {"authorization": f"Bearer {token}"}
        sem = asyncio.Semaphore(64)

        async def post(i):
            async with sem, s.post(f"{BASE}/api/rooms/lobby/messages", json={"text": f"message {i} " + "x" * 200}, headers=auth) as r:
                assert r.status == 201, r.status

        await asyncio.gather(*(post(i) for i in range(MESSAGES)))
        # Served events are redacted as of the history view at the head: wait for it to get there.
        for _ in range(600):
            async with s.get(f"{BASE}/api/rooms/lobby/events?since=0&limit=1", headers=auth) as r:
                if r.status == 200:
                    break
            await asyncio.sleep(0.1)

        # /events pages.
        lat, stop = [], time.monotonic() + SECONDS
        api0, cpu0 = await api_total(s), cpu_seconds()

        async def reader():
            while time.monotonic() < stop:
                since = random.randint(0, MESSAGES - 500)
                t = time.monotonic()
                async with s.get(f"{BASE}/api/rooms/lobby/events?since={since}&limit=500", headers=auth) as r:
                    body = await r.json()
                    assert r.status == 200 and len(body) == 500, (r.status, len(body))
                lat.append(time.monotonic() - t)

        t0 = time.monotonic()
        await asyncio.gather(*(reader() for _ in range(CLIENTS)))
        took = time.monotonic() - t0
        api1, cpu1 = await api_total(s), cpu_seconds()
        print(f"/events 500 events: {len(lat) / took:.0f} req/s, p50 {pct(lat, 0.5):.1f} ms, "
              f"p99 {pct(lat, 0.99):.1f} ms; edge {(cpu1 - cpu0) / len(lat) * 1000:.2f} ms CPU per "
              f"read; {(api1 - api0) / len(lat):.1f} JetStream API requests per read")

        # Catch-ups.
        joins = []
        api0, cpu0 = await api_total(s), cpu_seconds()
        for _ in range(JOINS):
            async with s.ws_connect(f"{BASE.replace('http', 'ws')}/ws?token={token}") as ws:
                t = time.monotonic()
                await ws.send_str(json.dumps({"type": "join", "room": "lobby", "since": 0}))
                seen = 0
                while seen < MESSAGES:
                    frame = json.loads((await ws.receive()).data)
                    if frame.get("type") == "event" and frame.get("event", {}).get("type") == "chat.message.posted":
                        seen += 1
                joins.append(time.monotonic() - t)
        api1, cpu1 = await api_total(s), cpu_seconds()
        print(f"join since=0 ({MESSAGES} events): p50 {pct(joins, 0.5):.0f} ms, max {max(joins) * 1000:.0f} ms; "
              f"edge {(cpu1 - cpu0) / JOINS * 1000:.1f} ms CPU per catch-up; "
              f"{(api1 - api0) / JOINS:.1f} JetStream API requests per join")


asyncio.run(main())
