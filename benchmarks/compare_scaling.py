"""Throughput of scripts/compare.py with 1, 2, 3 … local ComfyUI servers on the same job set.

    .venv/bin/python benchmarks/compare_scaling.py --servers 1,2,3 --prompts 12
    .venv/bin/python benchmarks/compare_scaling.py --servers 1,2 --threads 1     # one core per server

Starts the servers (``main.py --cpu`` on 127.0.0.1, the pack installed, the toy model), warms each up with one job,
then runs the same jobs (``--prompts`` toy prompts × 1 seed × unguided and Attend-and-Excite, at the toy workflow's
size and steps) through compare.py with 1, 2, … of them, and prints images per minute and the speed-up over one
server. On a machine with few cores the servers share them, so the speed-up says what sharding costs and gains
there, not what N GPUs would give (each GPU server then runs at its own full speed).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", default="1,2,3", help="server counts to measure")
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads per server (0: torch's default, every core); with servers × threads ≤ "
                         "cores the servers do not compete for cores")
    ap.add_argument("--workflow", default=str(ROOT / "example_workflows" / "attend_and_excite_toy.json"))
    a = ap.parse_args(argv)
    import compare
    from frontend import ComfyServer

    counts = [int(c) for c in a.servers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="aa_scaling_"))
    methods = tmp / "methods.json"
    methods.write_text(json.dumps([{"method": "unguided"}, {"method": "attend_excite"}]))
    servers = [ComfyServer(tmp / f"server{k}", threads=a.threads) for k in range(max(counts))]
    for s in servers:
        s.start()
    try:
        common = ["--prompts", "builtin:toy", "--methods", str(methods), "--workflow", a.workflow, "--seeds", "0",
                  "--no-progress", "--no-report"]
        for k, s in enumerate(servers):                                    # warm-up: model loaded on every server
            compare.main([*common, "--limit", "1", "--out", str(tmp / f"warm{k}"), "--servers", s.url])
        rows = []
        for n in counts:
            out = tmp / f"run{n}"
            t0 = time.perf_counter()
            rc = compare.main([*common, "--limit", str(a.prompts), "--out", str(out),
                               "--servers", ",".join(s.url for s in servers[:n])])
            seconds = time.perf_counter() - t0
            images = len(list(out.glob("images/*/*.png")))
            rows.append((n, images, seconds, rc))
        base = rows[0][1] / rows[0][2]
        print(f"\n{'servers':>7} {'images':>6} {'seconds':>8} {'images/min':>10} {'speed-up':>8}")
        for n, images, seconds, rc in rows:
            rate = images / seconds
            print(f"{n:7d} {images:6d} {seconds:8.1f} {60 * rate:10.1f} {rate / base:8.2f}{'' if rc == 0 else '  (errors)'}")
        print(f"machine: {os.cpu_count()} CPU cores, no GPU (each server runs ComfyUI with --cpu, "
              f"{a.threads or 'default'} torch threads)")
    finally:
        for s in servers:
            s.stop()


if __name__ == "__main__":
    main()
