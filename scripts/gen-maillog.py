#!/usr/bin/env python3
"""A large, realistic Postfix log for the simulator's benchmark (scripts/bench-simulate).

  scripts/gen-maillog.py LINES [--accounts N] [--seed S] > mail.log

Writes about LINES lines in the shapes the test suite's real Postfix wrote
(fixtures/postfix/maillog.log): SASL submissions, mail from internal hosts, inbound mail,
local submissions (pickup), one to many recipients per message, sent / deferred / bounced
outcomes, the MTA's own bounce notices, milter and RCPT refusals, connect/disconnect/TLS
lines, and other programs' lines (dovecot, amavis) between them, a month of time in order.
One account in 2,000 bursts (hundreds of recipients within minutes), as a hijacked one does.
Deterministic for a seed.
"""
import argparse
import random
import sys

MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lines", type=int)
    ap.add_argument("--accounts", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    out = sys.stdout
    write = out.write
    accounts = [f"user{i}@example.com" for i in range(args.accounts)]
    bursting = set(rnd.sample(range(args.accounts), max(1, args.accounts // 2000)))
    # A month of 30 days, spread evenly over the lines (about 8 per message).
    seconds = 30 * 86400
    step = seconds / max(1, args.lines / 8)
    t = 0.0
    qid = 0x10000000
    written = 0
    pid = 1000

    def stamp():
        s = int(t)
        day, rest = divmod(s, 86400)
        return f"Nov {day + 1:2d} {rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}"

    while written < args.lines:
        t = min(t + rnd.expovariate(1.0 / step), seconds - 1)
        ts = stamp()
        qid += rnd.randint(1, 5000)
        q = f"{qid:X}"
        pid = 1000 + (pid + 1) % 30000
        kind = rnd.random()
        lines = []
        if kind < 0.05:
            lines.append(f"{ts} mx dovecot: imap-login: Login: user=<{rnd.choice(accounts)}>, method=PLAIN, rip=203.0.113.{rnd.randint(1, 254)}")
            lines.append(f"{ts} mx amavis[{pid}]: ({pid}-01) Passed CLEAN {{RelayedInbound}}, [198.51.100.7]")
        elif kind < 0.08:
            lines.append(f"{ts} mx postfix/smtpd[{pid}]: NOQUEUE: reject: RCPT from unknown[198.51.100.{rnd.randint(1, 254)}]: 554 5.7.1 <spam@example.com>: Relay access denied; from=<x@spam.example> to=<y@elsewhere.example> proto=ESMTP helo=<spam>")
        else:
            i = rnd.randrange(len(accounts))
            account = accounts[i]
            burst = i in bursting and rnd.random() < 0.3
            n = rnd.randint(50, 200) if burst else (1 if rnd.random() < 0.7 else rnd.randint(2, 8))
            origin = rnd.random()
            if origin < 0.6:
                client = f"203.0.113.{rnd.randint(1, 254)}"
                lines.append(f"{ts} mx postfix/submission/smtpd[{pid}]: connect from c[{client}]")
                lines.append(f"{ts} mx postfix/submission/smtpd[{pid}]: {q}: client=c[{client}], sasl_method=PLAIN, sasl_username={account}")
                sender = account
            elif origin < 0.7:
                lines.append(f"{ts} mx postfix/smtpd[{pid}]: {q}: client=app[10.1.{rnd.randint(0, 9)}.{rnd.randint(1, 254)}]")
                sender = account
            elif origin < 0.75:
                lines.append(f"{ts} mx postfix/pickup[{pid}]: {q}: uid={1000 + i % 50} from=<{account}>")
                sender = account
            else:
                lines.append(f"{ts} mx postfix/smtpd[{pid}]: connect from mx.other[198.51.100.{rnd.randint(1, 254)}]")
                lines.append(f"{ts} mx postfix/smtpd[{pid}]: Anonymous TLS connection established from mx.other[198.51.100.7]: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)")
                lines.append(f"{ts} mx postfix/smtpd[{pid}]: {q}: client=mx.other[198.51.100.{rnd.randint(1, 254)}]")
                sender = f"news{rnd.randint(0, 999)}@other.example"
                n = 1
            if rnd.random() < 0.01:
                lines.append(f"{ts} mx postfix/cleanup[{pid + 1}]: {q}: milter-reject: END-OF-MESSAGE from c[203.0.113.9]: 5.7.1 spam; from=<{sender}> to=<a@remote.example> proto=ESMTP helo=<c>")
            else:
                lines.append(f"{ts} mx postfix/cleanup[{pid + 1}]: {q}: message-id=<{q}.{pid}@example.com>")
                lines.append(f"{ts} mx postfix/qmgr[99]: {q}: from=<{sender}>, size={rnd.randint(800, 90000)}, nrcpt={n} (queue active)")
                bounced = 0
                for r in range(n):
                    if sender == account:
                        to = f"r{rnd.randint(0, 999999)}@remote{rnd.randint(0, 999)}.example" if rnd.random() < 0.7 else f"u{rnd.randint(0, 9999)}@example.com"
                    else:
                        to = f"user{rnd.randint(0, len(accounts) - 1)}@example.com"
                    o = rnd.random()
                    agent = "local" if to.endswith("@example.com") else "smtp"
                    if o < 0.9:
                        lines.append(f"{ts} mx postfix/{agent}[{pid + 2}]: {q}: to=<{to}>, relay=mx.remote[192.0.2.{rnd.randint(1, 254)}]:25, delay=0.4, delays=0.1/0/0.1/0.2, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as {qid + 7:X})")
                    elif o < 0.97:
                        lines.append(f"{ts} mx postfix/smtp[{pid + 2}]: {q}: to=<{to}>, relay=none, delay=30, delays=0.1/0/30/0, dsn=4.4.1, status=deferred (connect to mx.remote[192.0.2.1]:25: Connection timed out)")
                        lines.append(f"{ts} mx postfix/smtp[{pid + 2}]: {q}: to=<{to}>, relay=mx.remote[192.0.2.1]:25, delay=600, delays=0.1/570/0.1/0.2, dsn=2.0.0, status=sent (250 2.0.0 Ok)")
                    else:
                        bounced += 1
                        lines.append(f"{ts} mx postfix/smtp[{pid + 2}]: {q}: to=<{to}>, relay=mx.remote[192.0.2.{rnd.randint(1, 254)}]:25, delay=0.4, delays=0.1/0/0.1/0.2, dsn=5.1.1, status=bounced (host said: 550 5.1.1 no such user)")
                if bounced:
                    nq = f"{qid + 3:X}"
                    lines.append(f"{ts} mx postfix/bounce[{pid + 3}]: {q}: sender non-delivery notification: {nq}")
                    lines.append(f"{ts} mx postfix/qmgr[99]: {nq}: from=<>, size=3000, nrcpt=1 (queue active)")
                    lines.append(f"{ts} mx postfix/qmgr[99]: {nq}: removed")
                lines.append(f"{ts} mx postfix/qmgr[99]: {q}: removed")
        write("\n".join(lines))
        write("\n")
        written += len(lines)


if __name__ == "__main__":
    main()
