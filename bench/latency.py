#!/usr/bin/env python3
"""Latency quantiles from scraped `/metrics` pages.

    bench/latency.py [--rate RATE] METRICS_FILE...

Reads two histograms and prints one JSON object: for every record
(`idlink_ingest_to_publish_seconds`) the records observed and, for p50
and p99, the upper bound of the histogram bucket that holds the quantile
(null when it is the +Inf bucket or nothing was observed), and the
fractions observed within 0.5 s and within 1 s; the same for
sign-ins alone under "sign_ins" (`idlink_sign_in_to_publish_seconds`,
the issue's target), and under "bucket_waits" the same for the waits
of device partitions on the bucket stage (`idlink_bucket_wait_seconds`,
partitioned mode; "records" counts waits). Several files (one per instance) are summed
bucket by bucket. RATE, if given, is echoed as `rate_records_per_second`.
Used by kafka-bench.sh and partitioned-bench.sh.
"""
import argparse
import json

args = argparse.ArgumentParser()
args.add_argument("--rate", type=int)
args.add_argument("files", nargs="+")
args = args.parse_args()
lines = [line for f in args.files for line in open(f).read().splitlines()]


def quantiles(metric):
    summed = {}
    for line in lines:
        if line.startswith(metric + "_bucket"):
            le = line.split('le="')[1].split('"')[0]
            le = float("inf") if le == "+Inf" else float(le)
            summed[le] = summed.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    buckets = sorted(summed.items())
    count = buckets[-1][1] if buckets else 0

    def quantile(q):
        for le, c in buckets:
            if count and c >= q * count:
                return None if le == float("inf") else le
        return None

    def within(seconds):
        c = dict(buckets).get(seconds)
        return round(c / count, 6) if count and c is not None else None

    return {
        "records": count,
        "p50_seconds_at_most": quantile(0.5),
        "p99_seconds_at_most": quantile(0.99),
        "within_0_5_seconds": within(0.5),
        "within_1_second": within(1.0),
    }


out = quantiles("idlink_ingest_to_publish_seconds")
out["sign_ins"] = quantiles("idlink_sign_in_to_publish_seconds")
out["bucket_waits"] = quantiles("idlink_bucket_wait_seconds")
if args.rate is not None:
    out["rate_records_per_second"] = args.rate
print(json.dumps(out))
