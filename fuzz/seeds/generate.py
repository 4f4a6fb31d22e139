#!/usr/bin/env python3
"""Writes the hand-made seed inputs of fuzz/seeds/ (run from anywhere; stdlib only).

The recorded Postfix streams (postfix-*.bin) are copies of fixtures/postfix/*.{mta,filter}.bin
and are not written here. Crash reproducers, if any, are kept next to the seeds as crash-*.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def pkt(kind, payload=b""):
    body = kind.encode() + payload
    return struct.pack(">I", len(body)) + body


def cstr(*items):
    return b"".join(i + b"\0" for i in items)


def write(target, name, data):
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data)


# --- milter_stream: what an MTA sends -------------------------------------------------------
optneg = pkt("O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF))
message = b"".join([
    pkt("D", b"C" + cstr(b"{client_addr}", b"192.0.2.10", b"{client_name}", b"client.example")),
    pkt("C", cstr(b"client.example") + b"4" + struct.pack(">H", 40000) + cstr(b"192.0.2.10")),
    pkt("H", cstr(b"client.example")),
    pkt("D", b"M" + cstr(b"{auth_authen}", b"alice@example.com", b"i", b"4ABC123")),
    pkt("M", cstr(b"<alice@example.com>", b"SIZE=100", b"BODY=8BITMIME")),
    pkt("D", b"R" + cstr(b"{rcpt_addr}", b"bob@example.net")),
    pkt("R", cstr(b"<bob@example.net>")),
    pkt("R", cstr(b"<carol@example.org>", b"NOTIFY=NEVER")),
    pkt("T"),
    pkt("L", cstr(b"Subject", b" hello")),
    pkt("L", cstr(b"X-Spam-Status", b" No, score=0.1")),
    pkt("N"),
    pkt("B", b"body line\r\n.dot\r\n"),
    pkt("E"),
])
write("milter_stream", "session-one-message", optneg + message + pkt("Q"))
write("milter_stream", "session-abort-and-reuse", optneg + b"".join([
    pkt("C", cstr(b"[2001:db8::1]") + b"6" + struct.pack(">H", 25) + cstr(b"IPv6:2001:db8::1")),
    pkt("M", cstr(b"<>")),
    pkt("R", cstr(b"<x@example.com>")),
    pkt("A"),
    pkt("U", cstr(b"XFOO bar")),
    pkt("K"),
    pkt("C", cstr(b"localhost") + b"L" + struct.pack(">H", 0) + cstr(b"/run/sock")),
    pkt("C", cstr(b"unknown") + b"U"),
]) + message + pkt("Q"))
write("milter_stream", "negotiate-old-version", pkt("O", struct.pack(">III", 2, 0x1F, 0x7F)) + pkt("Q"))

# --- milter_session: several connections to one filter ---------------------------------------
# A connection ends at QUIT or at a refused command; the next packet opens a new one.
def mail(sender, login, rcpts, headers, queue_id=b"4ABC123"):
    return b"".join(
        [pkt("D", b"M" + cstr(b"{auth_authen}", login, b"i", queue_id)), pkt("M", cstr(sender))]
        + [pkt("R", cstr(r)) for r in rcpts]
        + [pkt("T")]
        + [pkt("L", cstr(n, v)) for n, v in headers]
        + [pkt("N"), pkt("B", b"body\r\n"), pkt("E")]
    )

spam = [(b"Subject", b" hi"), (b"X-Fuzz", b"spam, surely")]
write("milter_session", "spam-tagged-then-quarantined", optneg + b"".join([
    mail(b"<alice@example.com>", b"alice@example.com", [b"<bob@example.net>"], spam),
    mail(b"<news@example.com>", b"news@example.com", [b"<a@customer.example>"], spam),
]) + pkt("Q"))
write("milter_session", "limit-reached-then-refused", optneg + b"".join(
    mail(b"<alice@example.com>", b"alice@example.com", [b"<r%d@example.net>" % i for i in range(3)], [])
    for _ in range(3)
) + pkt("Q"))
# Out of order, each ending its connection: MAIL before negotiation; BODY before MAIL; a second
# end-of-message; then a connection that survives ABORT, QUIT_NC and macros everywhere.
write("milter_session", "out-of-order-connections", b"".join([
    pkt("M", cstr(b"<alice@example.com>")),
    optneg + pkt("B", b"early"),
    optneg + mail(b"<alice@example.com>", b"alice@example.com", [b"<bob@example.net>"], []) + pkt("E"),
    optneg + pkt("D", b"C" + cstr(b"{client_addr}", b"10.1.2.3")) + pkt("M", cstr(b"<x@example.com>"))
    + pkt("A") + pkt("K") + pkt("D", b"M" + cstr(b"i", b"Q1"))
    + mail(b"<x@example.com>", b"", [b"<y@example.org>"], [(b"X-Fuzz", b"ham")]) + pkt("Q"),
]))

# --- journal_replay: a state directory's journal and audit trail ------------------------------
# `intact` is written by the store itself (the unit test
# the_journal_fuzz_seed_is_what_the_store_writes, UPDATE_FUZZ_SEEDS=1); the damaged ones are
# cut from it: a flipped byte in a record and torn tails, and a fragment before whole records.
marker = b"\n=== audit.log ===\n"
with open(os.path.join(HERE, "journal_replay", "intact"), "rb") as f:
    journal, audit = f.read().split(marker)
broken = bytearray(journal)
broken[journal.index(b"bob")] = ord("B")
write("journal_replay", "damaged-middle-and-torn-tail", bytes(broken) + b"0badc0de {\"op\":\"rel" + marker + audit + b"1234")
write("journal_replay", "fragment-then-record", b"0badc0de {\"op\":\"res" + journal + marker)

# --- reply_decode: what a filter answers ----------------------------------------------------
symbols = struct.pack(">I", 2) + b"{auth_authen} i\0" + struct.pack(">I", 5) + b"i\0"
replies = [
    pkt("O", struct.pack(">III", 6, 0x100, 0x400) + symbols),
    pkt("c"), pkt("a"), pkt("r"), pkt("t"), pkt("d"), pkt("s"), pkt("p"),
    pkt("y", cstr(b"550 5.1.8 restricted")),
    pkt("q", cstr(b"held for review")),
    pkt("h", cstr(b"X-Outbound-Guard", b"spam")),
    pkt("i", struct.pack(">I", 1) + cstr(b"X-A", b"b")),
    pkt("m", struct.pack(">I", 2) + cstr(b"Subject", b"")),
    pkt("+", cstr(b"<audit@example.com>")),
    pkt("2", cstr(b"<audit@example.com>", b"NOTIFY=NEVER")),
    pkt("-", cstr(b"<bob@example.net>")),
    pkt("e", cstr(b"<bounce@example.com>")),
    pkt("b", b"new body\r\n"),
]
write("reply_decode", "every-reply", b"".join(replies))
write("reply_decode", "single-reply-code", b"y550 5.2.2 limit reached\0")

# --- config_parse: plugin.toml variations --------------------------------------------------
write("config_parse", "rules-and-groups.toml", b"""\
[milter]
listen = "unix:run/outbound-guard.sock"
socket_mode = "0660"
on_internal_error = "accept"
io_timeout = "90s"
idle_timeout = "2h"

[organization]
local_domains = ["example.com", "b\xc3\xbccher.example"]
internal_networks = ["10.0.0.0/8", "2001:db8::/32"]

[state]
backend = "redis"
redis_url = "redis://127.0.0.1:6379/0"

[verdict]
sources = ["headers", "spamd", "rspamd"]
spamd = "127.0.0.1:783"
rspamd = "http://127.0.0.1:11333"
timeout = "5s"
max_scan_bytes = 524288
[[verdict.rule]]
header = "X-My-Scanner"
pattern = "^spam"
[[verdict.rule]]
header = "X-Score"
min_score = 5.0

[notify]
recipients = ["postmaster@example.com"]
webhook = "https://chat.example.com/hooks/abc"
language = "sv"
templates_dir = "templates"
warn_at_percent = 0
node_name = "mx1"
admin_url = "https://mx1.example.com/"

[log]
format = "json"
level = "debug"

[replies]
account_restricted = "550 5.7.1 no"
limit_reached = "550 5.2.2 slow down"
too_many_recipients = "452 4.5.3 later"

[policy.default]
recipient_limit_per_day = 0
action_when_threshold_reached = "alert"

[[policy.rule]]
name = "newsletter"
priority = 0
from = ["news@example.com"]
from_member_of = ["marketing"]
except_if_sender_domain_is = ["lists.example.com"]
recipient_limit_external_per_hour = 5000
spam_message_action = "quarantine"
bcc_suspicious_to = ["audit@example.com"]

[groups]
marketing = ["a@example.com", "b@example.com"]
""")
write("config_parse", "invalid-value.toml", b"""\
[milter]
listen = "inet:127.0.0.1:7357"
max_connections = -1
[policy.rule]
name = 5
""")


# --- maillog_line: Postfix log lines (made up here in Postfix's shapes) ---------------------
LOG = {
    "syslog-session": b"\n".join([
        b"Mar  4 09:01:02 mx postfix/smtpd[101]: 1A2B3C4D5E: client=host.example.net[192.0.2.7], sasl_method=PLAIN, sasl_username=alice@example.com",
        b"Mar  4 09:01:02 mx postfix/cleanup[102]: 1A2B3C4D5E: message-id=<x1@example.com>",
        b"Mar  4 09:01:02 mx postfix/qmgr[103]: 1A2B3C4D5E: from=<alice@example.com>, size=1234, nrcpt=2 (queue active)",
        b"Mar  4 09:01:03 mx postfix/smtp[104]: 1A2B3C4D5E: to=<bob@example.org>, relay=mx.example.org[198.51.100.2]:25, delay=0.5, delays=0.1/0/0.2/0.2, dsn=2.0.0, status=sent (250 ok)",
        b"Mar  4 09:01:03 mx postfix/smtp[104]: 1A2B3C4D5E: to=<carol@example.org>, relay=mx.example.org[198.51.100.2]:25, delay=0.5, delays=0.1/0/0.2/0.2, dsn=5.1.1, status=bounced (550 no such user)",
        b"Mar  4 09:01:03 mx postfix/bounce[105]: 1A2B3C4D5E: sender non-delivery notification: 6F7E8D9C0B",
        b"Mar  4 09:01:03 mx postfix/qmgr[103]: 1A2B3C4D5E: removed",
    ]) + b"\n",
    "rfc3339-local": b"\n".join([
        b"2026-12-07T16:07:48.123456+01:00 mx postfix/pickup[4900]: 4PbCZy4PWKz3tBr: uid=33 from=<shop@example.com>",
        b"2026-12-07T16:07:48.200000+01:00 mx postfix/cleanup[4907]: 4PbCZy4PWKz3tBr: milter-reject: END-OF-MESSAGE from localhost[127.0.0.1]: 5.5.3 Too many recipients; from=<shop@example.com> to=<a@example.net> proto=ESMTP helo=<localhost>",
        b"2026-12-07T16:07:49Z mx postfix/qmgr[4901]: 4PbCZy4PWKz3tBs: from=<shop@example.com>, status=expired, returned to sender",
        b"2026-12-07T16:07:50Z mx postfix/postsuper[4925]: 4PbCZy4PWKz3tBs: requeued",
        b"2026-12-07T16:07:50Z mx postfix/smtpd[4926]: NOQUEUE: reject: RCPT from unknown[2001:db8::1]: 554 5.7.1 <v@example.org>: Relay access denied; from=<s@example.net> to=<v@example.org> proto=ESMTP helo=<x>",
    ]) + b"\n",
    "odd": b"\n".join([
        b"",
        b"# comment",
        b"Mar  4 09:01:02 mx amavis[1]: (01) Passed CLEAN",
        b"Mar  4 09:01:02 mx postfix/qmgr[103]: 1A2B3C4D5E: from=<a@b>, size=, nrcpt=1 (queue active)",
        b"Mar 32 09:01:02 mx postfix/qmgr[103]: 1A2B3C4D5E: removed",
        b"Mar  4 09:01:02 mx postfix/smtpd[101] 1A2B3C4D5E: client=x[192.0.2.1]\r",
    ]),
}
for name, data in LOG.items():
    write("maillog_line", name, data)
