#!/usr/bin/env python3
"""Parses icegate's /metrics with the Prometheus text parsers of the Python
`prometheus-client` package, for tests/admin.rs.

  metrics_parse.py CLASSIC_FILE OPENMETRICS_FILE

CLASSIC_FILE holds /metrics as served by default (Prometheus text 0.0.4),
OPENMETRICS_FILE as served to `Accept: application/openmetrics-text`. Both
must parse, into the same families and sample names and labels (the values
may have moved between the two requests). Prints one JSON object:
{"families": {name: type}, "samples": [[name, {label: value}, value], ...]}.
Exits 3 when prometheus-client is not installed, 1 when the texts differ.
"""

import json
import sys

try:
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as openmetrics_families,
    )
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    print("prometheus-client is not installed: pip install prometheus-client", file=sys.stderr)
    sys.exit(3)


def flatten(families):
    kinds = {}
    samples = []
    for family in families:
        kinds[family.name] = family.type
        for sample in family.samples:
            samples.append([sample.name, dict(sample.labels), sample.value])
    return kinds, samples


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        classic = f.read()
    with open(sys.argv[2], encoding="utf-8") as f:
        openmetrics = f.read()
    kinds, samples = flatten(text_string_to_metric_families(classic))
    om_kinds, om_samples = flatten(openmetrics_families(openmetrics))
    # The two scrapes are moments apart: values may differ, names and labels not.
    keys = sorted((s[0], sorted(s[1].items())) for s in samples)
    om_keys = sorted((s[0], sorted(s[1].items())) for s in om_samples)
    if kinds != om_kinds or keys != om_keys:
        print("the two formats differ:", json.dumps([kinds, om_kinds]), file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"families": kinds, "samples": samples}))


main()
