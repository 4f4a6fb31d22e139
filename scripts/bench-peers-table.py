#!/usr/bin/env python3
"""The table of scripts/bench-peers: reads its JSON reports (milter-load's, and the Postfix
runs'), prints a Markdown table with ratios, and says which targets of issue #9 are met."""

import json
import os
import sys

results, resident = sys.argv[1], int(sys.argv[2])


def load(name):
    path = os.path.join(results, name + ".json")
    return json.load(open(path)) if os.path.exists(path) else None


def refused(r):
    o = r.get("outcomes", {})
    return r.get("recipients_refused", 0) + o.get("refused_at_mail", 0)


rows = [
    ("guard", f"outbound-guard, {resident:,} accounts resident"),
    ("guard-limited", "outbound-guard, 10% of accounts limited"),
    ("libmilter", "no-op libmilter filter (C)"),
    ("rspamd", "rspamd 3.4 ratelimit + redis"),
]

print("| transport | filter | msgs/s | p50 ms | p99 ms | server CPU µs/msg | peak RSS MiB | refused | × no-op libmilter | × rspamd |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
figures = {}
for t in ("tcp", "unix"):
    lib = load(f"libmilter-{t}")
    rsp = load(f"rspamd-{t}")
    for key, label in rows:
        r = load(f"{key}-{t}")
        if r is None:
            continue
        figures[(key, t)] = r
        s = r.get("server") or {}
        ratio = lambda other: f"{r['msgs_per_s'] / other['msgs_per_s']:.2f}" if other and other["msgs_per_s"] else "–"
        errors = r.get("outcomes", {}).get("error", 0)
        note = f" ({errors} errors)" if errors else ""
        print(
            f"| {t.upper()} | {label} | {r['msgs_per_s']:,.0f}{note} | {r['latency']['p50_us'] / 1000:.2f} | "
            f"{r['latency']['p99_us'] / 1000:.2f} | {s.get('cpu_us_per_msg', 0):.0f} | "
            f"{s.get('peak_rss_kib', 0) / 1024:.0f} | {refused(r):,} | {ratio(lib)} | {ratio(rsp)} |"
        )

print()
print("| Postfix end to end (smtp-source -s 8, 2 KiB) | delivered | msgs/s | × no milter |")
print("| --- | ---: | ---: | ---: |")
none = load("postfix-none")
for key, label in (
    ("none", "no milter"),
    ("outbound-guard", "outbound-guard"),
    ("outbound-guard-no-headers", "outbound-guard, header verdicts off"),
    ("libmilter", "no-op libmilter filter"),
):
    r = load(f"postfix-{key}")
    if r is None:
        continue
    ratio = f"{r['msgs_per_s'] / none['msgs_per_s']:.2f}" if none and none["msgs_per_s"] else "–"
    print(f"| {label} | {r['delivered']}/{r['messages']} | {r['msgs_per_s']:,.0f} | {ratio} |")

print()
print("| target (issue #9) | achieved | met |")
print("| --- | --- | --- |")


def target(label, value, goal, fmt, higher=True):
    if value is None:
        print(f"| {label} | not measured | – |")
        return
    ok = value >= goal if higher else value <= goal
    print(f"| {label} | {fmt.format(value)} | {'yes' if ok else 'no'} |")


def rate_ratio(a, b, t):
    x, y = figures.get((a, t)), figures.get((b, t))
    return x["msgs_per_s"] / y["msgs_per_s"] if x and y and y["msgs_per_s"] else None


target("throughput ≥ 3× no-op libmilter, TCP", rate_ratio("guard", "libmilter", "tcp"), 3, "{:.2f}×")
target("throughput ≥ 4× no-op libmilter, unix", rate_ratio("guard", "libmilter", "unix"), 4, "{:.2f}×")
target("throughput ≥ 30× rspamd-ratelimit, TCP", rate_ratio("guard", "rspamd", "tcp"), 30, "{:.1f}×")
target("throughput ≥ 5× rspamd-ratelimit, unix", rate_ratio("guard", "rspamd", "unix"), 5, "{:.1f}×")
g = figures.get(("guard", "tcp"))
target("p99 ≤ 2 ms, TCP, Postfix-like writer", g and g["latency"]["p99_us"] / 1000, 2, "{:.2f} ms", higher=False)
for t in ("tcp", "unix"):
    g, lib = figures.get(("guard", t)), figures.get(("libmilter", t))
    share = None
    if g and lib and (lib.get("server") or {}).get("cpu_us_per_msg"):
        share = g["server"]["cpu_us_per_msg"] / lib["server"]["cpu_us_per_msg"] * 100
    target(f"server CPU/msg ≤ 25% of no-op libmilter's, {t.upper()}", share, 25, "{:.0f}%", higher=False)
pn = load("postfix-none")
for key, label in (("outbound-guard", ""), ("outbound-guard-no-headers", ", header verdicts off")):
    pg = load(f"postfix-{key}")
    target(
        f"Postfix with outbound-guard{label} ≥ 90% of Postfix without milter",
        pg and pn and pg["msgs_per_s"] / pn["msgs_per_s"] * 100,
        90,
        "{:.0f}%",
    )
