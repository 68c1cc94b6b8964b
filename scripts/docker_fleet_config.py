#!/usr/bin/env python3
"""`make docker-fleet-config`: envoy/envoy.fleet.docker.yaml from envoy/envoy.yaml.

The fleet stack (envoy/docker-compose.fleet.yaml) runs two Envoys that share a
3-member etcd cluster. Their config is envoy/envoy.yaml, the one place the filter
chain is written, with exactly these changes (checked: anything else that differs,
or a source that no longer has the shape expected here, is an error):

- the listener and the admin listen on 0.0.0.0 (compose publishes them on 127.0.0.1);
- the wasm is /etc/envoy/callback_guard.wasm, where compose mounts it;
- the upstream is receiver:8080, found by DNS (STRICT_DNS);
- in the plugin configuration, callback_auth.allow_cidrs is the fleet network's
  gateway (Docker delivers connections to published ports from there), and
  duplicate_streams gets store.etcd;
- a cluster `etcd`: the three members' client ports over HTTP/1.1 (etcd's JSON
  gateway), health checked on /health, no panic routing.

Usage: docker_fleet_config.py SOURCE OUTPUT --sender-cidr CIDR [--etcd-members N]
Needs PyYAML (`make pytools`).
"""

import argparse
import copy
import json
import os
import sys

import yaml

WASM_SOURCE = "target/wasm32-wasip1/release/callback_guard.wasm"
WASM_DOCKER = "/etc/envoy/callback_guard.wasm"
SOURCE_CIDRS = ["127.0.0.0/8", "::1/128"]
ETCD_CLUSTER = "etcd"
KEY_PREFIX = "/callback-guard/"
TIMEOUT_MS = 1500


class Shape(Exception):
    """The source is not shaped as this script expects."""


def expect(cond, what):
    if not cond:
        raise Shape(what)


def sock(address, port):
    return {"address": address, "port_value": port}


def guard_filter(doc):
    listeners = doc["static_resources"]["listeners"]
    expect(len(listeners) == 1, f"one listener, found {len(listeners)}")
    hcm = listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]
    wasm = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm"]
    expect(len(wasm) == 1, f"one wasm filter, found {len(wasm)}")
    return wasm[0]["typed_config"]["config"]


def etcd_cluster(members):
    endpoints = [
        {"endpoint": {"address": {"socket_address": sock(f"etcd{i}", 2379)}}} for i in range(1, members + 1)
    ]
    return {
        "name": ETCD_CLUSTER,
        # One DNS name per member; a member that is stopped and started again may
        # come back on another address, so the names are looked up every second.
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_ONLY",
        "dns_refresh_rate": "1s",
        "connect_timeout": "0.25s",
        "load_assignment": {"cluster_name": ETCD_CLUSTER, "endpoints": [{"lb_endpoints": endpoints}]},
        # A dead or leaderless member (etcd's /health answers 503 without a leader)
        # takes no calls; with none healthy, calls fail at once and starts get 503.
        # no_traffic_interval: until the cluster has carried a call, Envoy checks every
        # 60 s by default, and the interval in force when a check is scheduled holds
        # until the next one: a member that died in Envoy's first minute would still
        # take about a third of the calls for up to a minute.
        "health_checks": [
            {
                "timeout": "0.5s",
                "interval": "0.5s",
                "no_traffic_interval": "0.5s",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "http_health_check": {"path": "/health"},
            }
        ],
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
    }


def transform(src, sender_cidr, members):
    """The fleet config, after checking that `src` has the expected shape."""
    doc = copy.deepcopy(src)
    admin = doc["admin"]["address"]["socket_address"]
    expect(admin == sock("127.0.0.1", 9901), f"admin on 127.0.0.1:9901, found {admin}")
    doc["admin"]["address"]["socket_address"] = sock("0.0.0.0", 9901)

    listener = doc["static_resources"]["listeners"][0]["address"]["socket_address"]
    expect(listener == sock("127.0.0.1", 10000), f"listener on 127.0.0.1:10000, found {listener}")
    doc["static_resources"]["listeners"][0]["address"]["socket_address"] = sock("0.0.0.0", 10000)

    cfg = guard_filter(doc)
    local = cfg["vm_config"]["code"]["local"]
    expect(local == {"filename": WASM_SOURCE}, f"the wasm at {WASM_SOURCE}, found {local}")
    local["filename"] = WASM_DOCKER

    plugin = json.loads(cfg["configuration"]["value"])
    cidrs = plugin.get("callback_auth", {}).get("allow_cidrs")
    expect(cidrs == SOURCE_CIDRS, f"callback_auth.allow_cidrs {SOURCE_CIDRS}, found {cidrs}")
    plugin["callback_auth"]["allow_cidrs"] = [sender_cidr]
    dup = plugin.get("duplicate_streams")
    expect(isinstance(dup, dict) and dup.get("reject") is True, f"duplicate_streams.reject true, found {dup}")
    expect("store" not in dup, f"duplicate_streams without a store, found {dup}")
    dup["store"] = {"etcd": {"cluster": ETCD_CLUSTER, "key_prefix": KEY_PREFIX, "timeout_ms": TIMEOUT_MS}}
    cfg["configuration"]["value"] = json.dumps(plugin, indent=2) + "\n"

    clusters = doc["static_resources"]["clusters"]
    expect([c["name"] for c in clusters] == ["upstream"], f"one cluster `upstream`, found {clusters}")
    up = clusters[0]
    expect(up["type"] == "STATIC", f"upstream STATIC, found {up['type']}")
    eps = up["load_assignment"]["endpoints"]
    expect(len(eps) == 1 and len(eps[0]["lb_endpoints"]) == 1, "upstream: one endpoint")
    ep = eps[0]["lb_endpoints"][0]["endpoint"]["address"]
    expect(ep["socket_address"] == sock("127.0.0.1", 8080), f"upstream 127.0.0.1:8080, found {ep}")
    up["type"] = "STRICT_DNS"
    ep["socket_address"] = sock("receiver", 8080)
    clusters.append(etcd_cluster(members))
    return doc


def leaves(value, path=()):
    """Every scalar of `value` by its path; the plugin configuration is read as JSON."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "value" and path[-1:] == ("configuration",):
                v = json.loads(v)
            out.update(leaves(v, path + (k,)))
        return out or {path: "{}"}
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(leaves(v, path + (i,)))
        return out or {path: "[]"}
    return {path: value}


def changed_paths(a, b):
    la, lb = leaves(a), leaves(b)
    return {p for p in la.keys() | lb.keys() if la.get(p, KeyError) != lb.get(p, KeyError)}


def check_diff(src, out):
    """Exactly the expected paths differ between the source and the output."""
    wasm_at = None
    for i, f in enumerate(src["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]):
        if f["name"] == "envoy.filters.http.wasm":
            wasm_at = i
    hcm = ("static_resources", "listeners", 0, "filter_chains", 0, "filters", 0, "typed_config")
    cfg = hcm + ("http_filters", wasm_at, "typed_config", "config")
    plugin = cfg + ("configuration", "value")
    expected_prefixes = [
        ("admin", "address", "socket_address", "address"),
        ("static_resources", "listeners", 0, "address", "socket_address", "address"),
        cfg + ("vm_config", "code", "local", "filename"),
        plugin + ("callback_auth", "allow_cidrs"),
        plugin + ("duplicate_streams", "store"),
        ("static_resources", "clusters", 0, "type"),
        ("static_resources", "clusters", 0, "load_assignment", "endpoints", 0, "lb_endpoints", 0,
         "endpoint", "address", "socket_address", "address"),
        ("static_resources", "clusters", 1),
    ]
    changed = changed_paths(src, out)
    unexpected = sorted(
        (p for p in changed if not any(p[: len(e)] == e for e in expected_prefixes)), key=str
    )
    expect(not unexpected, f"unexpected differences: {unexpected}")
    missing = [e for e in expected_prefixes if not any(p[: len(e)] == e for p in changed)]
    expect(not missing, f"expected differences missing: {missing}")
    return changed


class Dumper(yaml.SafeDumper):
    pass


def _str(dumper, s):
    style = "|" if "\n" in s else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)


Dumper.add_representer(str, _str)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("source")
    ap.add_argument("output")
    ap.add_argument("--sender-cidr", required=True)
    ap.add_argument("--etcd-members", type=int, default=3)
    a = ap.parse_args()

    with open(a.source) as f:
        src = yaml.safe_load(f)
    try:
        out = transform(src, a.sender_cidr, a.etcd_members)
        changed = check_diff(src, out)
    except (Shape, KeyError, IndexError, TypeError, ValueError) as e:
        print(
            f"docker-fleet-config: {a.source} changed shape ({type(e).__name__}: {e}); "
            "update scripts/docker_fleet_config.py",
            file=sys.stderr,
        )
        return 1
    text = yaml.dump(out, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=120)
    # What Envoy will read is what was checked.
    if yaml.safe_load(text) != out:
        print("docker-fleet-config: the YAML written does not read back as generated", file=sys.stderr)
        return 1
    members = ", ".join(f"etcd{i}:2379" for i in range(1, a.etcd_members + 1))
    header = f"""\
# GENERATED by `make docker-fleet-config` (scripts/docker_fleet_config.py) from
# {a.source} for envoy/docker-compose.fleet.yaml. Do not edit: change {a.source}
# (or the script) and regenerate. Differs only in ({len(changed)} values, checked):
# listen and admin on 0.0.0.0, the wasm at {WASM_DOCKER}, the upstream
# receiver:8080 (STRICT_DNS), allow_cidrs {a.sender_cidr}, duplicate_streams.store.etcd
# (cluster {ETCD_CLUSTER}, key_prefix {KEY_PREFIX}, timeout_ms {TIMEOUT_MS}), and the
# cluster `{ETCD_CLUSTER}`: {members} (HTTP/1.1, health checked on /health).

"""
    tmp = a.output + ".tmp"
    with open(tmp, "w") as f:
        f.write(header + text)
    os.replace(tmp, a.output)
    print(f"wrote {a.output} (senders {a.sender_cidr}, etcd {members})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
