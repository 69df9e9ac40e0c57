"""Draws the main ratios of a `cargo xtask bench` run as a PNG.

usage: python chart.py latest.json latest.png

One group of bars per scenario: Portcullis's advantage over each peer that ran (nginx,
HAProxy, Traefik, Caddy, Pingora; `--peers` may leave some out) and the direct path for the
scenario's main figure (req/s, MiB/s, new conn/s, msg/s, KiB per idle
connection). "Advantage" is oriented so that above 1 always means Portcullis is better:
Portcullis / other for rates, other / Portcullis for memory. Against the direct path it is
at most about 1 (the upstream alone is the limit a proxy can reach).
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Every target Portcullis can be compared with, in the table's column order.
OTHERS = [
    ("nginx", "vs nginx", "#4C72B0"),
    ("haproxy", "vs HAProxy", "#DD8452"),
    ("traefik", "vs Traefik", "#55A868"),
    ("caddy", "vs Caddy", "#C44E52"),
    ("pingora", "vs Pingora", "#8172B3"),
    ("direct", "vs direct (limit)", "#8C8C8C"),
]


def present(scenarios):
    """The OTHERS that ran in at least one scenario."""
    return [o for o in OTHERS if any(o[0] in s["targets"] for s in scenarios)]


def title(report):
    m = report["machine"]
    # Reports from before the extra peers have no "peers" list: nginx and HAProxy ran.
    peers = report.get("peers") or [{"key": "nginx"}, {"key": "haproxy"}]
    names = []
    for p in peers:
        key = p["key"]
        if key == "nginx":
            names.append(f"nginx {m['nginx'].removeprefix('nginx/')}")
        elif key == "haproxy":
            names.append(f"HAProxy {m['haproxy'].split()[0]}")
        else:
            names.append(f"{p.get('label', key)} {m.get(key) or ''}".strip())
    return (
        f"Portcullis {m['git']} vs {', '.join(names) or 'direct'}: medians of "
        f"{report['settings']['runs']} runs, {m['nproc']} CPUs"
    )


def advantage(scenario, other):
    targets = scenario["targets"]
    if "portcullis" not in targets or other not in targets:
        return None
    ours = targets["portcullis"]["median"]["figure"]
    theirs = targets[other]["median"]["figure"]
    if not ours or not theirs:
        return None
    return ours / theirs if scenario["higher_is_better"] else theirs / ours


def main(src, dst):
    with open(src) as f:
        report = json.load(f)
    scenarios = report["scenarios"]
    others = present(scenarios)
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(others) * len(scenarios) + 2), 5), dpi=120)
    width = 0.8 / max(1, len(others))
    for i, (key, label, color) in enumerate(others):
        xs, ys = [], []
        for x, s in enumerate(scenarios):
            a = advantage(s, key)
            if a is not None:
                xs.append(x - 0.4 + width * (i + 0.5))
                ys.append(a)
        bars = ax.bar(xs, ys, width, label=label, color=color)
        ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=6 if len(others) > 3 else 7, padding=2)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(scenarios)))
    short = {"KiB per idle connection": "KiB/idle conn"}
    ax.set_xticklabels([f"{s['name']}\n({short.get(s['unit'], s['unit'])})" for s in scenarios], fontsize=8)
    ax.set_ylabel("Portcullis advantage (>1: Portcullis better)")
    ax.set_title(title(report), fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(dst)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
