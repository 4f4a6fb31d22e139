#!/usr/bin/env python3
"""Load driver of scripts/soak (run by it, not by hand): SMTP AUTH submissions into a
private Postfix, and a slower stream of local submissions through its sendmail(1).

  soak-driver.py --port P --config-dir DIR --messages N --max-time S [options]

Each of --connections parallel SMTP sessions logs in (AUTH PLAIN) as one account and sends
--per-connection messages (RSET between, one or two recipients each), then QUITs and
starts over with another account. Most sessions are one of --accounts ordinary accounts
(userI@example.com); a --noisy-share of them belongs to the current generation of noisy
accounts (noisyJ@noisy.example.com, --noisy-per-gen of them, a new generation every
--gen-seconds), which reach their limit and are restricted. After every 1/--local-share
SMTP messages, one message goes through `sendmail -C DIR` as a local program would send
it. Stops after --messages messages in all or --max-time seconds, whichever comes first;
prints one JSON object with the counts on stdout and a progress line to stderr every 10 s.
"""

import argparse
import asyncio
import base64
import json
import random
import sys
import time


class Stats:
    def __init__(self):
        self.attempted = 0  # messages started (SMTP and local)
        self.accepted = 0  # 250 after the end of DATA
        self.refused_mail = 0  # 5xx at MAIL FROM (a restricted account)
        self.refused_rcpt = 0  # messages with a 5xx at RCPT TO (a limit reached)
        self.tempfail = 0  # 4xx anywhere
        self.other_5xx = 0  # 5xx after DATA
        self.errors = 0  # connection failures, timeouts, unexpected replies
        self.sessions = 0
        self.local_sent = 0
        self.local_failed = 0
        self.noisy_sessions = 0


class Smtp:
    def __init__(self, reader, writer):
        self.r, self.w = reader, writer

    async def reply(self):
        lines = []
        while True:
            line = await asyncio.wait_for(self.r.readline(), 60)
            if not line:
                raise ConnectionError("connection closed")
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), b"".join(lines)

    async def cmd(self, text):
        self.w.write(text.encode() + b"\r\n")
        return await self.reply()


def body(sender, rcpts, n):
    text = (
        f"From: <{sender}>\r\nTo: {', '.join('<' + r + '>' for r in rcpts)}\r\n"
        f"Subject: soak {n}\r\nMessage-ID: <soak.{n}.{random.getrandbits(48):x}@example.com>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
    )
    return text + ("soak test line of about sixty-four characters, nothing more...\r\n" * 12)


def pick_account(args, t0):
    if random.random() < args.noisy_share:
        gen = int((time.monotonic() - t0) / args.gen_seconds)
        i = (gen * args.noisy_per_gen + random.randrange(args.noisy_per_gen)) % args.noisy_pool
        return f"noisy{i}@noisy.example.com", True
    return f"user{random.randrange(args.accounts)}@example.com", False


async def session(args, st, t0, budget):
    account, noisy = pick_account(args, t0)
    st.sessions += 1
    st.noisy_sessions += noisy
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", args.port), 30)
    s = Smtp(reader, writer)
    try:
        code, _ = await s.reply()
        if code != 220:
            raise RuntimeError(f"banner {code}")
        code, _ = await s.cmd("EHLO soak.example.com")
        token = base64.b64encode(f"\0{account}\0{args.password}".encode()).decode()
        code, text = await s.cmd(f"AUTH PLAIN {token}")
        if code != 235:
            raise RuntimeError(f"AUTH {account}: {text!r}")
        for _ in range(args.per_connection):
            if not budget():
                break
            st.attempted += 1
            n = st.attempted
            rcpts = [f"rcpt{random.randrange(100000)}@example.net"]
            if random.random() < 0.3:
                rcpts.append(f"user{random.randrange(args.accounts)}@example.com")
            code, _ = await s.cmd(f"MAIL FROM:<{account}>")
            if code >= 400:
                if code >= 500:
                    st.refused_mail += 1
                else:
                    st.tempfail += 1
                await s.cmd("RSET")
                continue
            ok = 0
            refused = temp = False
            for r in rcpts:
                code, _ = await s.cmd(f"RCPT TO:<{r}>")
                if code < 300:
                    ok += 1
                elif code >= 500:
                    refused = True
                else:
                    temp = True
            if refused:
                st.refused_rcpt += 1
            elif temp:
                st.tempfail += 1
            if ok == 0:
                await s.cmd("RSET")
                continue
            code, _ = await s.cmd("DATA")
            if code != 354:
                st.errors += 1
                await s.cmd("RSET")
                continue
            data = body(account, rcpts, n).replace("\r\n.", "\r\n..")
            writer.write(data.encode() + b".\r\n")
            code, _ = await s.reply()
            if code < 300:
                st.accepted += 1
            elif code >= 500:
                st.other_5xx += 1
            else:
                st.tempfail += 1
            code, _ = await s.cmd("RSET")
        try:
            await s.cmd("QUIT")
        except (ConnectionError, asyncio.TimeoutError):
            pass
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def local_submission(args, st, n):
    sender = f"app{random.randrange(20)}@example.com"
    rcpt = f"rcpt{random.randrange(100000)}@example.net"
    p = await asyncio.create_subprocess_exec(
        "sendmail", "-C", args.config_dir, "-i", "-f", sender, "--", rcpt,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await p.communicate(body(sender, [rcpt], n).encode())
    if p.returncode == 0:
        st.local_sent += 1
    else:
        st.local_failed += 1
        print(f"soak-driver: sendmail exit {p.returncode}: {err.decode(errors='replace').strip()}", file=sys.stderr)


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--config-dir", required=True, help="the private Postfix's config_directory")
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--max-time", type=float, default=5400)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--per-connection", type=int, default=10)
    ap.add_argument("--accounts", type=int, default=200)
    ap.add_argument("--password", default="soak-password")
    ap.add_argument("--noisy-share", type=float, default=0.02)
    ap.add_argument("--noisy-per-gen", type=int, default=5)
    ap.add_argument("--noisy-pool", type=int, default=500)
    ap.add_argument("--gen-seconds", type=float, default=60)
    ap.add_argument("--local-share", type=float, default=0.01)
    args = ap.parse_args()

    st = Stats()
    t0 = time.monotonic()
    deadline = t0 + args.max_time
    local_every = max(1, round(1 / args.local_share)) if args.local_share > 0 else 0
    locals_pending = set()

    def budget():
        if st.attempted >= args.messages or time.monotonic() >= deadline:
            return False
        if local_every and st.attempted % local_every == local_every - 1:
            st.attempted += 1
            t = asyncio.ensure_future(local_submission(args, st, st.attempted))
            locals_pending.add(t)
            t.add_done_callback(locals_pending.discard)
            return st.attempted < args.messages
        return True

    async def worker():
        while budget():
            try:
                await session(args, st, t0, budget)
            except (OSError, ConnectionError, asyncio.TimeoutError, RuntimeError) as e:
                st.errors += 1
                print(f"soak-driver: session: {e}", file=sys.stderr)
                await asyncio.sleep(0.5)

    async def progress():
        last = 0
        while True:
            await asyncio.sleep(10)
            now = time.monotonic()
            print(
                f"soak-driver: {now - t0:.0f}s {st.attempted} messages ({(st.attempted - last) / 10:.0f}/s), "
                f"{st.accepted} accepted, {st.refused_mail + st.refused_rcpt} refused, {st.tempfail} tempfailed, "
                f"{st.local_sent} local, {st.errors} errors",
                file=sys.stderr, flush=True,
            )
            last = st.attempted

    prog = asyncio.ensure_future(progress())
    await asyncio.gather(*(worker() for _ in range(args.connections)))
    if locals_pending:
        await asyncio.gather(*locals_pending)
    prog.cancel()
    elapsed = time.monotonic() - t0
    out = dict(vars(st))
    out["elapsed_s"] = round(elapsed, 1)
    out["msgs_per_s"] = round(st.attempted / elapsed, 1) if elapsed else 0
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
