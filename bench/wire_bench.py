"""Model push throughput: our wire (ModelPush, validated) against bare pyzmq, in the same run.

``python -m bench.wire_bench [--sizes 1 10 100] [--reps N] [--trials N] [--json PATH]``

For each size, one float32 tensor travels tcp://127.0.0.1 and is answered:

- **ours**: build ``ModelPush`` (field checks), ``encode``, ``model_dealer`` -> ``model_router``
  (zero-copy send and receive), ``decode`` with every check a node runs (limits, header,
  tensor metadata against frame lengths, NaN/Inf scan), then a ``ModelAck`` back, decoded.
- **bare**: a PAIR socket pair moving the same buffer (``copy=False`` both ways), ``b"ok"`` back.
- **bare+scan**: the same, plus one NaN/Inf scan of the received frame: the least any receiver
  that looks at the data pays, so ``ours/+scan`` is what the protocol itself costs.

Each size runs several trials, each on fresh connections (loopback TCP speed here differs from
one connection to the next), and repetitions rotate between the three so machine noise hits
all. Times are medians of all samples; ratios (throughput, ours over baseline) are medians of
the per-trial ratios. Also timed alone, cache-warm: the codec without sockets, the scan, and
SHA-256 (what a witness computes to attest a model; node logic, not in "ours").
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import zmq

from bench.report import arguments, column_table, publish
from transport import messages as m
from transport.codec import Limits, decode, encode, is_finite
from transport.sockets import (
    SocketFactory,
    endpoint,
    recv_from_sync,
    recv_sync,
    send_sync,
    send_to_sync,
)
from transport.tensors import TensorPayload, model_hash

MB = 1 << 20
SIZES_MB = (1, 10, 100)
WAIT_MS = 30_000
LIMITS = Limits(max_total_bytes=2 << 30)


def _reps_for(size_mb: int) -> int:
    return 20 if size_mb <= 1 else 8 if size_mb <= 10 else 3


def _tensor(size_mb: int) -> TensorPayload:
    values = np.random.default_rng(size_mb).standard_normal(size_mb * MB // 4, dtype=np.float32)
    return TensorPayload("weight", "float32", values.shape, memoryview(values).cast("B"))


def _push(tensor: TensorPayload, h: str) -> m.ModelPush:
    """The measured message: round 1's model from ``sender``, one tensor."""
    return m.ModelPush(
        run_id="bench",
        sender="sender",
        round=1,
        trainer="sender",
        hash=h,
        samples=1,
        tensors=(tensor,),
    )


def _ours_once(dealer: zmq.Socket, router: zmq.Socket, tensor: TensorPayload, h: str) -> float:
    start = time.perf_counter()
    send_sync(dealer, _push(tensor, h))
    got = recv_from_sync(router, WAIT_MS)
    if got is None:
        raise TimeoutError("model_push did not arrive")
    identity, frames = got
    msg = decode(frames, LIMITS)
    assert isinstance(msg, m.ModelPush) and msg.tensors[0].nbytes == tensor.nbytes
    send_to_sync(router, identity, m.ModelAck(round=msg.round, trainer=msg.trainer, hash=msg.hash))
    reply = recv_sync(dealer, WAIT_MS)
    if reply is None:
        raise TimeoutError("model_ack did not arrive")
    assert isinstance(decode(reply), m.ModelAck)
    return time.perf_counter() - start


def _codec_once(tensor: TensorPayload, h: str) -> None:
    """The CPU part of ``_ours_once`` without sockets: what the wire costs beyond the bytes."""
    msg = decode(encode(_push(tensor, h)), LIMITS)
    assert isinstance(msg, m.ModelPush)
    decode(encode(m.ModelAck(round=msg.round, trainer=msg.trainer, hash=msg.hash)))


def _bare_once(a: zmq.Socket, b: zmq.Socket, tensor: TensorPayload, scan: bool = False) -> float:
    """PAIR to PAIR and back; ``scan``: also read the received bytes once (the NaN/Inf scan)."""
    start = time.perf_counter()
    a.send(tensor.data, copy=False)
    if not b.poll(WAIT_MS):
        raise TimeoutError("bare message did not arrive")
    frame = b.recv(copy=False)
    assert len(frame.buffer) == tensor.nbytes
    if scan:
        is_finite(TensorPayload(tensor.name, tensor.dtype, tensor.shape, frame.buffer))
    b.send(b"ok")
    if not a.poll(WAIT_MS):
        raise TimeoutError("bare reply did not arrive")
    a.recv()
    return time.perf_counter() - start


def _timed(fn: Any, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _trial(tensor: TensorPayload, h: str, reps: int) -> dict[str, list[float]]:
    """Fresh connections for both sides, then ``reps`` alternating measurements."""
    ctx = zmq.Context()
    try:
        factory = SocketFactory(ctx)
        router = factory.model_router("tcp://127.0.0.1:0")
        dealer = factory.model_dealer("sender", endpoint(router))
        a = ctx.socket(zmq.PAIR)
        a.linger = 0
        a.bind("tcp://127.0.0.1:0")
        b = ctx.socket(zmq.PAIR)
        b.linger = 0
        b.connect(endpoint(a))
        _bare_once(a, b, tensor)  # warm-up: connections up, buffers touched
        _ours_once(dealer, router, tensor, h)
        out: dict[str, list[float]] = {"bare": [], "bare_scan": [], "ours": []}
        for _ in range(reps):
            out["bare"].append(_bare_once(a, b, tensor))
            out["bare_scan"].append(_bare_once(a, b, tensor, scan=True))
            out["ours"].append(_ours_once(dealer, router, tensor, h))
        return out
    finally:
        ctx.destroy(linger=0)


def measure(size_mb: int, reps: int, trials: int) -> dict[str, float]:
    """Several trials on fresh connections: loopback TCP speed here varies per connection."""
    tensor = _tensor(size_mb)
    h = model_hash([tensor])
    pooled: dict[str, list[float]] = {"bare": [], "bare_scan": [], "ours": []}
    ratios, scan_ratios = [], []
    for _ in range(trials):
        samples = _trial(tensor, h, reps)
        trial = {k: statistics.median(v) for k, v in samples.items()}
        ratios.append(trial["bare"] / trial["ours"])
        scan_ratios.append(trial["bare_scan"] / trial["ours"])
        for k, v in samples.items():
            pooled[k] += v
    med = {k: statistics.median(v) for k, v in pooled.items()}
    nbytes = tensor.nbytes
    return {
        "size_mb": size_mb,
        "samples": trials * reps,
        "bare_ms": med["bare"] * 1e3,
        "bare_scan_ms": med["bare_scan"] * 1e3,
        "ours_ms": med["ours"] * 1e3,
        "bare_gbps": nbytes / med["bare"] / 1e9,
        "ours_gbps": nbytes / med["ours"] / 1e9,
        "ratio": statistics.median(ratios),  # throughput ours / bare, median over trials
        "ratio_vs_scan": statistics.median(scan_ratios),  # ours / (bare + one read of the data)
        "trial_ratios": ratios,
        "codec_ms": _timed(lambda: _codec_once(tensor, h), max(reps, 5)) * 1e3,
        "finite_check_ms": _timed(lambda: is_finite(tensor), max(reps, 5)) * 1e3,
        "sha256_ms": _timed(lambda: model_hash([tensor]), 3) * 1e3,
    }


def run(
    sizes: tuple[int, ...] = SIZES_MB, reps: int | None = None, trials: int = 5
) -> dict[str, Any]:
    rows = [measure(size, reps or _reps_for(size), trials) for size in sizes]
    return {
        "bench": "wire",
        "transport": "tcp://127.0.0.1",
        "zmq": zmq.zmq_version(),
        "pyzmq": zmq.__version__,
        "rows": rows,
        "min_ratio": min(r["ratio"] for r in rows),
        "target_ratio": 0.85,
    }


COLUMNS = (  # (title, key, format)
    ("size MB", "size_mb", "{:>7}"),
    ("n", "samples", "{:>4}"),
    ("bare ms", "bare_ms", "{:>8.2f}"),
    ("+scan ms", "bare_scan_ms", "{:>8.2f}"),
    ("ours ms", "ours_ms", "{:>8.2f}"),
    ("bare GB/s", "bare_gbps", "{:>9.2f}"),
    ("ours GB/s", "ours_gbps", "{:>9.2f}"),
    ("ours/bare", "ratio", "{:>9.2f}"),
    ("ours/+scan", "ratio_vs_scan", "{:>10.2f}"),
    ("codec ms", "codec_ms", "{:>8.3f}"),
    ("finite ms", "finite_check_ms", "{:>9.3f}"),
    ("sha256 ms", "sha256_ms", "{:>9.2f}"),
)


def table(result: dict[str, Any]) -> str:
    lines = column_table(COLUMNS, result["rows"])
    lines.append(f"min ours/bare {result['min_ratio']:.2f} (target >= {result['target_ratio']})")
    lines.append(
        "+scan: bare plus one NaN/Inf scan of the received frame (any receiver reads the data "
        "once)\ncodec: build+encode+decode (all checks) of push and ack, no sockets; "
        "finite: the scan alone, cache-warm; sha256: model_hash, not in ours"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES_MB), metavar="MB")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per trial")
    parser.add_argument("--trials", type=int, default=5, help="fresh connection pairs per size")
    args = parser.parse_args(argv)
    result = run(tuple(args.sizes), args.reps, args.trials)
    publish("wire", result, table(result), args.json)


if __name__ == "__main__":
    main()
