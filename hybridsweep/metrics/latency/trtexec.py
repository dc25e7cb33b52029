"""Read trtexec's performance summary, and write trtexec command lines that each TensorRT version accepts.

The summary block (TensorRT 8.2 and later) looks like
    [I] === Performance summary ===
    [I] Throughput: 72.2544 qps
    [I] Latency: min = ... ms, max = ... ms, mean = ... ms, median = ... ms, percentile(99%) = ... ms
    [I] GPU Compute Time: min = ... ms, ..., percentile(90%) = ... ms, ..., percentile(99%) = ... ms
    [I] Total GPU Compute Time: 2.99948 s
TensorRT 8 prints one percentile (99% unless --percentile says otherwise); 10 and 11 print 90, 95 and 99.
"GPU Compute Time" is the engine's own time on the GPU, "Latency" adds the host<->device copies.

Flags differ by major version: 8.x sizes the workspace with --workspace=N (MiB); 10 replaced it with
--memPoolSize=workspace:NM; 11 removed --fp16 because every network is strongly typed, so there the
precision lives in the ONNX file's own types (export it in float16).
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass

from hybridsweep.errors import UserError
from hybridsweep.metrics.latency.result import LatencyResult, invalid

SUMMARY_MARK = "=== Performance summary ==="
TRT_MAJORS = (8, 10, 11)
PRECISIONS = ("fp16", "fp32")

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|inf|nan"
_STAT = re.compile(rf"(min|max|mean|median|percentile\(([\d.]+)%\))\s*=?\s*({_NUMBER})\s*ms")
_QUERIES = re.compile(r"Timing trace has (\d+) queries")
_BANNER_VERSION = re.compile(r"\[TensorRT v(\d+)\]")
_DOTTED_VERSION = re.compile(r"TensorRT version: (\d+\.\d+\.\d+)")


class TrtexecOutputError(UserError):
    """trtexec's output holds no usable performance summary (it failed, or it is not trtexec output)."""


@dataclass(frozen=True)
class TrtexecStats:
    """One summary line, in ms."""

    min_ms: float
    max_ms: float
    mean_ms: float
    median_ms: float
    percentiles_ms: Mapping[float, float]

    def tail(self, percent: float = 90.0) -> tuple[float, float]:
        """(percentile, ms): the one asked for, else the nearest printed above it (TensorRT 8: only 99%)."""
        above = sorted(p for p in self.percentiles_ms if p >= percent)
        if above:
            return above[0], self.percentiles_ms[above[0]]
        return 100.0, self.max_ms


@dataclass(frozen=True)
class TrtexecSummary:
    gpu_compute: TrtexecStats
    latency: TrtexecStats  # H2D + GPU compute + D2H
    throughput_qps: float | None
    queries: int
    tensorrt_version: str | None

    def to_result(
        self, *, backend: str = "trtexec", device: str = "unknown", batch_size: int = 1, facts=None
    ) -> LatencyResult:
        """The GPU compute time as a LatencyResult; the facts say which percentile stands in for p90."""
        percent, tail_ms = self.gpu_compute.tail(90.0)
        summary_facts = {
            "metric": "trtexec GPU Compute Time",
            "host_latency_median_ms": f"{self.latency.median_ms:g}",
        }
        if percent != 90.0:
            summary_facts["p90_from"] = f"percentile({percent:g}%)"
        if self.tensorrt_version:
            summary_facts["tensorrt"] = self.tensorrt_version
        return LatencyResult(
            median_ms=self.gpu_compute.median_ms,
            p90_ms=tail_ms,
            mean_ms=self.gpu_compute.mean_ms,
            std_ms=None,
            runs=self.queries,
            batch_size=batch_size,
            backend=backend,
            device=device,
            source="measured",
            facts={**summary_facts, **(facts or {})},
        )


def parse_trtexec_summary(text: str) -> TrtexecSummary:
    """Parse the last performance summary in trtexec's output; TrtexecOutputError says what the text held."""
    if SUMMARY_MARK not in text:
        raise TrtexecOutputError(f"trtexec output has no '{SUMMARY_MARK}' ({describe_output(text)})")
    lines = text[text.rindex(SUMMARY_MARK) :].splitlines()
    gpu_compute = _stats_line(lines, "GPU Compute Time")
    latency = _stats_line(lines, "Latency")
    if gpu_compute is None or latency is None:
        raise TrtexecOutputError(
            "trtexec's performance summary lacks a complete 'GPU Compute Time' or 'Latency' line "
            f"({describe_output(chr(10).join(lines))})"
        )
    throughput = _value_line(lines, "Throughput", "qps")
    queries = _query_count(text, lines, gpu_compute)
    if queries is None:
        raise TrtexecOutputError(
            "trtexec's performance summary gives no query count ('Timing trace has N queries' or "
            f"'Total GPU Compute Time') ({describe_output(chr(10).join(lines))})"
        )
    return TrtexecSummary(gpu_compute, latency, throughput, queries, tensorrt_version(text))


def tensorrt_version(text: str) -> str | None:
    """ "8.2.1" from trtexec's banner "[TensorRT v8201]" (8.x: M*1000+m*100+p; 10 on: M*10000+m*100+p)."""
    if match := _DOTTED_VERSION.search(text):
        return match[1]
    if match := _BANNER_VERSION.search(text):
        number = int(match[1])
        if number >= 10000:
            return f"{number // 10000}.{number // 100 % 100}.{number % 100}"
        return f"{number // 1000}.{number // 100 % 10}.{number % 100}"
    return None


def describe_output(text: str, head: int = 3) -> str:
    """A one-line picture of some output for an error message: size, first lines, last error lines."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "the output was empty"
    clip = lambda line: line if len(line) <= 160 else line[:157] + "..."
    count = f"{len(lines)} line" + ("s" if len(lines) > 1 else "")
    picture = f"{count}, starting: " + " | ".join(clip(line) for line in lines[:head])
    errors = [line for line in lines[head:] if "[E]" in line or "FAILED" in line or "rror" in line][-3:]
    if errors:
        picture += "; errors: " + " | ".join(clip(line) for line in errors)
    return picture


def check_trtexec_settings(*, precision: str, workspace_mb: int, trt_major: int) -> None:
    if trt_major not in TRT_MAJORS:
        raise invalid("trt_major", trt_major, "use 8 (JetPack 4.6 on the TX2: TensorRT 8.2), 10 or 11")
    if precision not in PRECISIONS:
        raise invalid("precision", precision, f"choose one of {', '.join(PRECISIONS)}")
    if workspace_mb < 1:
        raise invalid("workspace_mb", workspace_mb, "use a positive size in MiB, e.g. 1024")


def trtexec_command(
    trtexec_path: str,
    onnx_path: str,
    *,
    precision: str,
    workspace_mb: int,
    trt_major: int,
    warmup_ms: int = 500,
    duration_s: int = 5,
    iterations: int = 100,
) -> list[str]:
    """The argv that builds an engine from `onnx_path` and times it, in the flags `trt_major` accepts.

    With trt_major >= 11 and precision fp16 no flag is written: the ONNX file must already be float16.
    On 8.x, --percentile=90 makes the summary print a true p90 (its default is 99% only).
    """
    check_trtexec_settings(precision=precision, workspace_mb=workspace_mb, trt_major=trt_major)
    argv = [trtexec_path, f"--onnx={onnx_path}"]
    if precision == "fp16" and trt_major < 11:
        argv.append("--fp16")
    if trt_major == 8:
        argv += [f"--workspace={workspace_mb}", "--percentile=90"]
    else:
        argv.append(f"--memPoolSize=workspace:{workspace_mb}M")
    argv += [
        f"--warmUp={warmup_ms}",
        f"--duration={duration_s}",
        f"--iterations={iterations}",
        "--avgRuns=100",
    ]
    return argv


def _stats_line(lines: list[str], label: str) -> TrtexecStats | None:
    # The label must open the line or follow a "] " log tag, so "Latency" does not match "H2D Latency".
    pattern = re.compile(rf"(?:^|\]\s+){re.escape(label)}:(.*)$")
    for line in lines:
        if match := pattern.search(line.strip()):
            values: dict[str, float] = {}
            percentiles: dict[float, float] = {}
            for stat in _STAT.finditer(match[1]):
                if stat[2] is not None:
                    percentiles[float(stat[2])] = float(stat[3])
                else:
                    values[stat[1]] = float(stat[3])
            if {"min", "max", "mean", "median"} <= values.keys():
                return TrtexecStats(
                    values["min"], values["max"], values["mean"], values["median"], percentiles
                )
            return None
    return None


def _value_line(lines: list[str], label: str, unit: str) -> float | None:
    pattern = re.compile(rf"(?:^|\]\s+){re.escape(label)}:\s*({_NUMBER})\s*{unit}")
    for line in lines:
        if match := pattern.search(line.strip()):
            return float(match[1])
    return None


def _query_count(text: str, lines: list[str], gpu_compute: TrtexecStats) -> int | None:
    """Exact from "Timing trace has N queries" when printed, else total GPU time / mean GPU time."""
    if counts := _QUERIES.findall(text):
        return int(counts[-1])
    total_s = _value_line(lines, "Total GPU Compute Time", "s")
    if total_s is None or gpu_compute.mean_ms <= 0:
        return None
    return round(total_s * 1e3 / gpu_compute.mean_ms)
