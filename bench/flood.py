# A flood the limits refuse: 20 sockets of one user sending 1 000 messages/s in all, and 200
# guest logins/s from one address (127.0.0.2, so that a bench beside it on 127.0.0.1 can be
# exempt from the per-address limits and the flood not), for DURATION seconds. Prints what was
# accepted and refused. Usage: python3 bench/flood.py http://127.0.0.1:8091 14 (needs aiohttp).
import asyncio, json, sys, time, uuid, aiohttp
BASE = sys.argv[1]; DURATION = float(sys.argv[2])
async def sockets(session, token, stats):
    async def one(n):
        async with session.ws_connect(f"{BASE.replace('http','ws')}/ws?token={token}") as ws:
            async def reader():
                async for msg in ws:
                    f = json.loads(msg.data)
                    if f["type"] == "ack": stats["acked"] += 1
                    elif f["type"] == "error": stats[f["code"]] = stats.get(f["code"], 0) + 1
            r = asyncio.create_task(reader())
            end = time.monotonic() + DURATION
            while time.monotonic() < end:
                await ws.send_str(json.dumps({"type": "send", "room": "lobby", "text": "flood", "id": str(uuid.uuid4())}))
                stats["sent"] += 1
                await asyncio.sleep(1 / 50)
            await asyncio.sleep(1); r.cancel()
    await asyncio.gather(*(one(n) for n in range(20)))
async def logins(session, stats):
    end = time.monotonic() + DURATION
    n = 0
    tasks = []
    while time.monotonic() < end:
        async def one(n):
            async with session.post(f"{BASE}/api/auth/guest", json={"user": f"flood{n}"}) as r:
                stats[f"login {r.status}"] = stats.get(f"login {r.status}", 0) + 1
        tasks.append(asyncio.create_task(one(n))); n += 1
        await asyncio.sleep(1 / 200)
    await asyncio.gather(*tasks, return_exceptions=True)
async def main():
    stats = {"sent": 0, "acked": 0}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), limit=0)) as session:
        async with session.post(f"{BASE}/api/auth/guest", json={"user": "flooder"}) as r:
            token = (await r.json())["token"]
        await asyncio.gather(sockets(session, token, stats), logins(session, stats))
    print(json.dumps(stats))
asyncio.run(main())
