#!/usr/bin/env python3
"""The table of scripts/bench-peers: reads its JSON reports (milter-load's, and the Postfix
runs'), prints a Markdown table with ratios, and says which targets of issue #9 are met."""

import glob
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
    ("ceiling", "ceiling: no-op filter on our codec (Rust)"),
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
print("| Postfix end to end (smtp-source -s 8, 2 KiB) | delivered | best msgs/s | × no milter | the rounds | mean × no milter |")
print("| --- | ---: | ---: | ---: | --- | ---: |")
none = load("postfix-none")


def rounds(name):
    """msgs/s of each round of one Postfix measurement, in the order they ran."""
    paths = sorted(glob.glob(os.path.join(results, f"postfix-{name}.[0-9]*.json")), key=lambda p: int(p.split(".")[-2]))
    return [json.load(open(p))["msgs_per_s"] for p in paths]


none_rounds = rounds("none")
for key, label in (
    ("none", "no milter"),
    ("outbound-guard", "outbound-guard"),
    ("outbound-guard-no-headers", "outbound-guard, header verdicts off"),
    ("ceiling", "ceiling: no-op filter on our codec"),
    ("libmilter", "no-op libmilter filter"),
):
    r = load(f"postfix-{key}")
    if r is None:
        continue
    ratio = f"{r['msgs_per_s'] / none['msgs_per_s']:.2f}" if none and none["msgs_per_s"] else "–"
    these = rounds(key)
    mean = f"{sum(these) / sum(none_rounds):.2f}" if these and none_rounds and sum(none_rounds) else "–"
    listed = ", ".join(f"{x:.0f}" for x in these)
    print(f"| {label} | {r['delivered']}/{r['messages']} | {r['msgs_per_s']:,.0f} | {ratio} | {listed} | {mean} |")

print()
print("What outbound-guard reaches, and what the ceiling filter (a filter that only answers) reaches")
print("in the same run: a target the ceiling misses is out of reach for any filter on this machine.")
print()
print("| target (issue #9) | outbound-guard | met | ceiling filter | met |")
print("| --- | ---: | --- | ---: | --- |")


def target(label, values, goal, fmt, higher=True):
    cells = []
    for value in values:
        if value is None:
            cells += ["not measured", "–"]
            continue
        ok = value >= goal if higher else value <= goal
        cells += [fmt.format(value), "yes" if ok else "no"]
    print(f"| {label} | {' | '.join(cells)} |")


def rate_ratio(a, b, t):
    x, y = figures.get((a, t)), figures.get((b, t))
    return x["msgs_per_s"] / y["msgs_per_s"] if x and y and y["msgs_per_s"] else None


def p99_ms(a, t):
    x = figures.get((a, t))
    return x and x["latency"]["p99_us"] / 1000


def cpu_share(a, t):
    x, lib = figures.get((a, t)), figures.get(("libmilter", t))
    if x and lib and (lib.get("server") or {}).get("cpu_us_per_msg"):
        return x["server"]["cpu_us_per_msg"] / lib["server"]["cpu_us_per_msg"] * 100
    return None


def postfix_share(name):
    pf, none = load(f"postfix-{name}"), load("postfix-none")
    return pf and none and pf["msgs_per_s"] / none["msgs_per_s"] * 100


both = ("guard", "ceiling")
target("throughput ≥ 3× no-op libmilter, TCP", [rate_ratio(f, "libmilter", "tcp") for f in both], 3, "{:.2f}×")
target("throughput ≥ 4× no-op libmilter, unix", [rate_ratio(f, "libmilter", "unix") for f in both], 4, "{:.2f}×")
target("throughput ≥ 30× rspamd-ratelimit, TCP", [rate_ratio(f, "rspamd", "tcp") for f in both], 30, "{:.1f}×")
target("throughput ≥ 5× rspamd-ratelimit, unix", [rate_ratio(f, "rspamd", "unix") for f in both], 5, "{:.1f}×")
target("p99 ≤ 2 ms, TCP, Postfix-like writer", [p99_ms(f, "tcp") for f in both], 2, "{:.2f} ms", higher=False)
for t in ("tcp", "unix"):
    target(f"server CPU/msg ≤ 25% of no-op libmilter's, {t.upper()}", [cpu_share(f, t) for f in both], 25, "{:.0f}%", higher=False)
target("Postfix end to end ≥ 90% of Postfix without milter", [postfix_share("outbound-guard"), postfix_share("ceiling")], 90, "{:.0f}%")
target("the same, header verdicts off", [postfix_share("outbound-guard-no-headers"), postfix_share("ceiling")], 90, "{:.0f}%")
