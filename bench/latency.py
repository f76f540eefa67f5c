#!/usr/bin/env python3
"""Latency quantiles from a scraped `/metrics` page.

    bench/latency.py METRICS_FILE [RATE]

Reads the `idlink_ingest_to_publish_seconds` histogram and prints one JSON
object: the records observed and, for p50 and p99, the upper bound of the
histogram bucket that holds the quantile (null when it is the +Inf bucket
or nothing was observed). RATE, if given, is echoed as
`rate_records_per_second`. Used by kafka-bench.sh and partitioned-bench.sh.
"""
import json
import sys

buckets = []
for line in open(sys.argv[1]):
    if line.startswith("idlink_ingest_to_publish_seconds_bucket"):
        le = line.split('le="')[1].split('"')[0]
        buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
buckets.sort()
count = buckets[-1][1] if buckets else 0


def quantile(q):
    for le, c in buckets:
        if count and c >= q * count:
            return None if le == float("inf") else le
    return None


out = {"records": count, "p50_seconds_at_most": quantile(0.5), "p99_seconds_at_most": quantile(0.99)}
if len(sys.argv) > 2:
    out["rate_records_per_second"] = int(sys.argv[2])
print(json.dumps(out))
