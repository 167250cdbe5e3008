"""Load test of the Gradio Space: concurrent `gradio_client` clients against each endpoint of `demo/app.py`.

Command (the issue's spec: 20 clients, 60 s per endpoint)::

    nice -n 15 python -m benchmarks.bench_space_load --clients 20 --seconds 60 --threads 1

Run time: 340 s here (2 cores shared with other jobs, load average 12-13 during the run): start-up with the
example cache, then 4 endpoints x 60 s, each followed by the requests still in flight; `tests/test_demo.py` runs
a short version (4 clients x 5 s against its own tiny-model server).

The app is launched with `samclip demo` (the shipped mosaic model unless `--model`) on 127.0.0.1 in a subprocess.
Each client is its own `gradio_client.Client` in a thread that submits requests back to back for `--seconds`,
each uploading one of the Space's example mosaics with that example's arguments; the latency of a request is
from submission to answer, so it includes the wait in gradio's queue (which by default runs one request per
endpoint at a time: at 20 clients the p50 is about 20 service times).

Target: no failed request on any endpoint. Reported: requests, failures, answers per second, p50/p99/max
latency per endpoint, and the server's resident memory (RSS, from /proc) after start-up and a warm-up request
per endpoint ("before"), after each endpoint, and its high-water mark (VmHWM).

Measured here (shipped mosaic model, 1 torch thread, 20 clients x 60 s): 0 failed of 636 requests; answers/s and
p50/p99 latency: classify 4.6/s 4.2/7.5 s, segment 2.9/s 6.5/9.4 s, segment_text (SAM-refined) 1.2/s 16.8/24.8 s,
label_everything 1.1/s 16.6/20.7 s (latency is mostly the wait behind 19 other clients); RSS 644 MiB before,
799 MiB after, peak 854 MiB. Before the app wrote answer files atomically (`save_pil_to_cache` in demo/app.py),
2 of 10 requests failed at 4 clients.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from .common import RESULTS_DIR, format_table, machine_info

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "demo" / "examples"
FASHION_LABELS = "T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot"
# Each endpoint with the arguments of one of the Space's own examples (the image is uploaded on every request).
ENDPOINTS = {
    "/classify": ("mosaic-0.png", FASHION_LABELS),
    "/segment": ("mosaic-2.png", "box 11, 8, 74, 75"),
    "/segment_text": ("mosaic-2.png", "Bag, Sandal, Coat", "SAM-refined map", -1),
    "/label_everything": ("mosaic-0.png", FASHION_LABELS, -1),
}


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (`share` in [0, 1]) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


def rss_mib(pid: int) -> dict[str, float]:
    """The process's resident memory now (`rss_mib`) and its high-water mark (`peak_mib`), from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss_mib": int(fields["VmRSS"].split()[0]) / 1024, "peak_mib": int(fields["VmHWM"].split()[0]) / 1024}


def _arguments(endpoint: str) -> tuple:
    from gradio_client import handle_file

    image, *rest = ENDPOINTS[endpoint]
    return (handle_file(str(EXAMPLES / image)), *rest)


def drive(url: str, clients: int, seconds: float, on_endpoint_done=None) -> dict[str, dict]:
    """`clients` concurrent clients submit requests back to back for `seconds` against each endpoint in turn;
    returns per endpoint the request count, failures (with the first error), answers per second and latency
    percentiles in ms. `on_endpoint_done(endpoint)` runs after each endpoint (e.g. to read the server's memory)."""
    from gradio_client import Client

    connections = [Client(url, verbose=False) for _ in range(clients)]
    results = {}
    for endpoint in ENDPOINTS:
        latencies, errors, lock = [], [], threading.Lock()
        start = threading.Barrier(clients)

        def work(client, endpoint=endpoint, latencies=latencies, errors=errors, lock=lock, start=start):
            start.wait()
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                try:
                    client.predict(*_arguments(endpoint), api_name=endpoint)
                except Exception as error:  # every failure is counted and the first one reported, never raised
                    with lock:
                        errors.append(f"{type(error).__name__}: {error}")
                else:
                    with lock:
                        latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        threads = [threading.Thread(target=work, args=(client,)) for client in connections]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        results[endpoint] = {
            "requests": len(latencies) + len(errors),
            "failed": len(errors),
            "first_error": errors[0] if errors else None,
            "answers_per_s": len(latencies) / elapsed,
            "p50_ms": 1000 * percentile(latencies, 0.50) if latencies else None,
            "p99_ms": 1000 * percentile(latencies, 0.99) if latencies else None,
            "max_ms": 1000 * max(latencies) if latencies else None,
            "wall_s": elapsed,
        }
        if on_endpoint_done is not None:
            on_endpoint_done(endpoint)
    for client in connections:
        client.close()
    return results


def free_port() -> int:
    """A port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(model: str | None, threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    """`samclip demo` on a free 127.0.0.1 port, its examples cached in a fresh folder; returns it and its URL once
    the page answers."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("samclip")), "demo", "--port", str(port), "--threads", str(threads)]
    if model:
        command += ["--model", model]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "OMP_NUM_THREADS": str(threads),
        "GRADIO_EXAMPLES_CACHE": tempfile.mkdtemp(prefix="samclip-load-cache-"),
    }
    with open(log, "w") as handle:
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 600
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return process, url
        except OSError as error:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise SystemExit(f"the Space did not start:\n{log.read_text()[-3000:]}") from error
            time.sleep(1)


def main(argv: list[str] | None = None) -> dict:
    """Launch the Space, warm it up, drive it, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20, help="concurrent gradio_client clients")
    parser.add_argument("--seconds", type=float, default=60, help="how long the clients submit to each endpoint")
    parser.add_argument("--model", default=None, help="model folder or Hub id (default: the shipped mosaic model)")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "bench_space_load.json")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0 or args.threads < 1:
        parser.error("--clients and --threads must be at least 1 and --seconds above 0.")
    started = time.perf_counter()
    log = Path(tempfile.mkdtemp(prefix="samclip-load-")) / "space.log"
    process, url = launch(args.model, args.threads, log)
    try:
        from gradio_client import Client

        warm = Client(url, verbose=False)
        for endpoint in ENDPOINTS:  # the first answer also waits for the examples cached at launch
            warm.predict(*_arguments(endpoint), api_name=endpoint)
        warm.close()
        memory = {"before": rss_mib(process.pid)}
        results = drive(
            url,
            args.clients,
            args.seconds,
            on_endpoint_done=lambda endpoint: memory.__setitem__(f"after {endpoint}", rss_mib(process.pid)),
        )
    finally:
        process.terminate()
        process.wait(timeout=60)
    rows = [
        [name, r["requests"], r["failed"], r["answers_per_s"], r["p50_ms"], r["p99_ms"], r["max_ms"]]
        for name, r in results.items()
    ]
    latency = format_table(["endpoint", "requests", "failed", "answers/s", "p50 ms", "p99 ms", "max ms"], rows)
    memory_table = format_table(
        ["when", "RSS MiB", "peak RSS MiB"], [[when, m["rss_mib"], m["peak_mib"]] for when, m in memory.items()]
    )
    print(f"{args.clients} clients x {args.seconds:g} s per endpoint on {url}\n\n{latency}\n\n{memory_table}")
    failed = sum(r["failed"] for r in results.values())
    result = {
        "benchmark": "bench_space_load",
        "command": " ".join(["python -m benchmarks.bench_space_load", *(argv if argv is not None else sys.argv[1:])]),
        "clients": args.clients,
        "seconds_per_endpoint": args.seconds,
        "model": args.model or "shipped mosaic model",
        "endpoints": results,
        "memory_mib": memory,
        "targets": {"no_failed_request": {"value": failed, "op": "==", "target": 0, "met": failed == 0}},
        "machine": machine_info(args.threads),
        "wall_seconds": time.perf_counter() - started,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.output} ({result['wall_seconds']:.0f} s); failed requests: {failed}")
    return result


if __name__ == "__main__":
    main()
