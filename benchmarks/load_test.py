"""Bounded load test of `unetkit serve` on loopback: requests/s, p50/p99 latency, errors, server memory.

Starts the server itself (a subprocess bound to 127.0.0.1 on a free port), sends ``--requests``
POST /predict uploads from ``--concurrency`` concurrent clients (asyncio; ``--client raw``, the
default, speaks keep-alive HTTP/1.1 on asyncio streams, ``--client httpx`` uses httpx) for at most
``--max-seconds`` per round, and prints one Markdown row per round. The server's resident memory
(VmRSS from /proc) is read after a warm-up and after each round, so growth across rounds shows.

    python benchmarks/load_test.py                          # the seed's U-Net, 1000 requests, 32 clients
    python benchmarks/load_test.py --model runs/carla --requests 2000 --rounds 3
    python benchmarks/load_test.py --arch tiny --image-size 32 32   # the server's own overhead

Without ``--model`` it saves an untrained network of the chosen size into a temporary run folder
(the cost of a forward pass does not depend on the weights). Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_run(arch: str, folder: Path) -> Path:
    from unetkit.config import ModelConfig, RunConfig
    from unetkit.model import unet_model
    from unetkit.run import save_run

    cfg = ModelConfig() if arch == "seed" else ModelConfig(input_size=(32, 32, 3), n_filters=4, n_classes=3)
    model = unet_model(cfg.input_size, n_filters=cfg.n_filters, n_classes=cfg.n_classes)
    return save_run(folder / f"{arch}-run", model, RunConfig(model=cfg))


BOUNDARY = "unetkit-load-test-boundary"
FORM_HEADERS = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def form_body(png: bytes) -> bytes:
    """The multipart/form-data body a browser sends for one file in the field ``file``, built once per
    image so that the clients, which share the machine with the server, spend little CPU per request."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="image.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    )
    return head.encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()


def test_images(count: int, height: int, width: int) -> list[bytes]:
    """Distinct smooth PNGs (like photos, they compress), one per client slot."""
    out = []
    yy, xx = np.mgrid[:height, :width]
    for i in range(count):
        rng = np.random.default_rng(i)
        phase = xx[..., None] / rng.uniform(4, 20) + yy[..., None] / rng.uniform(4, 20) + rng.uniform(0, 6, 3)
        noise = rng.normal(0, 6, (height, width, 3))
        img = np.clip(rng.uniform(60, 200, 3) + 50 * np.sin(phase) + noise, 0, 255)
        buf = io.BytesIO()
        Image.fromarray(img.astype(np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


API_KEY = secrets.token_urlsafe(24)  # access control on, as a deployment would run it (--no-auth: off)
HEADERS: dict[str, str] = {"Authorization": f"Bearer {API_KEY}"}


def get_json(url: str) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, headers=HEADERS), timeout=10) as r:
        return json.loads(r.read())


def start_server(model: Path, port: int, args: argparse.Namespace, log: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-c",
        "from unetkit.cli import main; main()",
        "serve",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--batch-window-ms",
        str(args.batch_window_ms),
        "--max-batch",
        str(args.max_batch),
    ]
    env = dict(os.environ)
    env.pop("UNETKIT_API_KEY", None)
    if HEADERS:
        env["UNETKIT_API_KEY"] = API_KEY
    if args.precision:
        command += ["--precision", args.precision]
    proc = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            get_json(f"http://127.0.0.1:{port}/health")
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not start within 120 s")


class RawClient:
    """One keep-alive HTTP/1.1 connection on asyncio streams: a load generator that costs the shared
    cores a small fraction of what httpx's client does, so that they measure the server."""

    def __init__(self, url: str, headers: dict[str, str]):
        self.host, _, port = url.removeprefix("http://").partition(":")
        self.port = int(port)
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, target: str, body: bytes) -> tuple[int, bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        head = f"POST {target} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n{self.headers}\r\n"
        writer.write(head.encode() + body)
        try:
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            return status, await reader.readexactly(length)
        except (IndexError, ValueError, asyncio.IncompleteReadError):
            self.close()
            raise ConnectionError("the server closed the connection or answered malformed HTTP") from None

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def one_round(
    url: str, images: list[bytes], n: int, concurrency: int, max_seconds: float, fmt: str, client_kind: str = "raw"
) -> dict:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    start = time.perf_counter()
    stop_at = start + max_seconds
    headers = {**HEADERS, **FORM_HEADERS}

    async def client(slot: int, http: httpx.AsyncClient) -> None:
        nonlocal sent
        raw = RawClient(url, headers) if client_kind == "raw" else None
        while sent < n and time.perf_counter() < stop_at:
            sent += 1
            data = images[(slot + sent) % len(images)]
            t0 = time.perf_counter()
            try:
                if raw is not None:
                    status = (await raw.post(f"/predict?format={fmt}", data))[0]
                else:
                    status = (await http.post(f"{url}/predict", params={"format": fmt}, content=data)).status_code
                ok, key = status == 200, str(status)
            except (httpx.HTTPError, OSError) as e:
                ok, key = False, type(e).__name__
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors[key] = errors.get(key, 0) + 1
        if raw is not None:
            raw.close()

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60.0, headers=headers) as http:
        await asyncio.gather(*(client(i, http) for i in range(concurrency)))
    seconds = time.perf_counter() - start
    lat = sorted(latencies)
    pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: float("nan"))
    return {
        "requests": len(lat) + sum(errors.values()),
        "ok": len(lat),
        "errors": errors,
        "seconds": seconds,
        "rps": len(lat) / seconds if seconds else 0.0,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "mean_ms": statistics.fmean(lat) * 1000 if lat else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="run folder or .onnx file (default: untrained --arch network)")
    ap.add_argument(
        "--arch",
        choices=["seed", "tiny"],
        default="seed",
        help="seed: 96x128x3, 32 filters, 23 classes (8.6 M parameters); tiny: 32x32x3, 4",
    )
    ap.add_argument("--requests", type=int, default=1000, help="per round")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-seconds", type=float, default=300.0, help="time cap per round")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--image-size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    ap.add_argument("--format", default="png", choices=["png", "colour", "overlay", "json"])
    ap.add_argument("--batch-window-ms", type=float, default=5.0)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--precision", choices=["fp32", "bf16", "int8"], help="serve --precision (int8: export it first)")
    ap.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="raw: keep-alive HTTP/1.1 on asyncio streams (light); httpx: httpx's AsyncClient (heavier)",
    )
    ap.add_argument("--no-auth", action="store_true", help="serve without an API key (default: access control on)")
    args = ap.parse_args()
    if args.no_auth:
        HEADERS.clear()
    if min(args.requests, args.concurrency, args.rounds) < 1 or args.max_seconds <= 0:
        raise SystemExit("--requests, --concurrency and --rounds must be >= 1, --max-seconds > 0")

    with tempfile.TemporaryDirectory(prefix="unetkit-load-") as tmp:
        model = args.model or make_run(args.arch, Path(tmp))
        port = free_port()
        proc = start_server(model, port, args, Path(tmp) / "server.log")
        url = f"http://127.0.0.1:{port}"
        try:
            images = [form_body(png) for png in test_images(16, *args.image_size)]
            warm = (min(32, args.requests), min(8, args.concurrency))
            asyncio.run(one_round(url, images, *warm, 60, args.format, args.client))
            rss0 = rss_mb(proc.pid)
            info = get_json(url + "/info")
            h, w, c = info["input_size"]
            name = model.name if args.model else args.arch
            print(
                f"{name} ({info['model']['backend']} {info['model'].get('precision', '')}, "
                f"input {h}x{w}x{c}, {info['n_classes']} classes), "
                f"images {args.image_size[0]}x{args.image_size[1]} PNG, format={args.format}, "
                f"batch window {args.batch_window_ms:g} ms, max batch {args.max_batch}, "
                f"{os.cpu_count()} CPU cores shared by server and clients ({args.client} client), torch threads default"
            )
            print(
                "| round | requests | clients | seconds | requests/s | p50 ms | p99 ms | errors | "
                "mean batch | model busy s | server CPU-s | client CPU-s | RSS before MB | RSS after MB |"
            )
            print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            results = []
            before = rss0
            for r in range(1, args.rounds + 1):
                stats0 = get_json(url + "/health")["batcher"]
                cpu0 = cpu_seconds(proc.pid), own_cpu_seconds()
                res = asyncio.run(
                    one_round(url, images, args.requests, args.concurrency, args.max_seconds, args.format, args.client)
                )
                res["server_cpu_s"] = cpu_seconds(proc.pid) - cpu0[0]
                res["client_cpu_s"] = own_cpu_seconds() - cpu0[1]
                stats1 = get_json(url + "/health")["batcher"]
                res["model_busy_s"] = stats1["busy_seconds"] - stats0["busy_seconds"]
                batches = stats1["batches"] - stats0["batches"]
                res["mean_batch"] = (stats1["items"] - stats0["items"]) / batches if batches else 0.0
                res["rss_before_mb"], res["rss_after_mb"] = before, rss_mb(proc.pid)
                before = res["rss_after_mb"]
                errors = sum(res["errors"].values())
                detail = f" {res['errors']}" if errors else ""
                print(
                    f"| {r} | {res['requests']} | {args.concurrency} | {res['seconds']:.1f} | "
                    f"{res['rps']:.1f} | {res['p50_ms']:.0f} | {res['p99_ms']:.0f} | {errors}{detail} | "
                    f"{res['mean_batch']:.1f} | {res['model_busy_s']:.1f} | {res['server_cpu_s']:.1f} | "
                    f"{res['client_cpu_s']:.1f} | "
                    f"{res['rss_before_mb']:.0f} | {res['rss_after_mb']:.0f} |",
                    flush=True,
                )
                results.append(res)
            if args.json:
                args.json.write_text(
                    json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rounds": results}, indent=2)
                )
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
