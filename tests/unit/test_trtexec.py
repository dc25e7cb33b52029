"""trtexec's performance summary parsed from real output, and version-right command lines."""

import pytest

from hybridsweep.errors import UserError
from hybridsweep.metrics.latency import parse_trtexec_summary, trtexec_command
from hybridsweep.metrics.latency.trtexec import TrtexecOutputError, tensorrt_version

# TensorRT 8.2.1 on a Jetson (JetPack 4.6), verbatim: one percentile (99%), an End-to-End Host Latency line.
TRT_8_2 = """\
[05/18/2023-21:52:15] [I] === Performance summary ===
[05/18/2023-21:52:15] [I] Throughput: 72.2544 qps
[05/18/2023-21:52:15] [I] Latency: min = 13.7075 ms, max = 14.8861 ms, mean = 13.8259 ms, median = 13.7999 ms, percentile(99%) = 14.8121 ms
[05/18/2023-21:52:15] [I] End-to-End Host Latency: min = 13.7175 ms, max = 14.9229 ms, mean = 13.8394 ms, median = 13.8109 ms, percentile(99%) = 14.831 ms
[05/18/2023-21:52:15] [I] Enqueue Time: min = 6.08826 ms, max = 9.51123 ms, mean = 7.35561 ms, median = 7.19287 ms, percentile(99%) = 9.49573 ms
[05/18/2023-21:52:15] [I] H2D Latency: min = 0.117554 ms, max = 0.13623 ms, mean = 0.120202 ms, median = 0.119202 ms, percentile(99%) = 0.128906 ms
[05/18/2023-21:52:15] [I] GPU Compute Time: min = 13.5784 ms, max = 14.7576 ms, mean = 13.6963 ms, median = 13.6698 ms, percentile(99%) = 14.6803 ms
[05/18/2023-21:52:15] [I] D2H Latency: min = 0.00830078 ms, max = 0.0100708 ms, mean = 0.00940053 ms, median = 0.00939941 ms, percentile(99%) = 0.0100098 ms
[05/18/2023-21:52:15] [I] Total Host Walltime: 3.03096 s
[05/18/2023-21:52:15] [I] Total GPU Compute Time: 2.99948 s
[05/18/2023-21:52:15] [I] Explanations of the performance metrics are printed in the verbose logs.
[05/18/2023-21:52:15] [I]
&&&& PASSED TensorRT.trtexec [TensorRT v8201] # /usr/src/tensorrt/bin/trtexec --onnx=best.onnx --saveEngine=here.engine --best
"""  # noqa: E501

# TensorRT 10.x, verbatim (NVIDIA/TensorRT issue 4177): percentiles 90, 95 and 99, no End-to-End line.
TRT_10 = """\
[10/03/2024-10:47:59] [I] === Performance summary ===
[10/03/2024-10:47:59] [I] Throughput: 130.298 qps
[10/03/2024-10:47:59] [I] Latency: min = 5.38672 ms, max = 13.3664 ms, mean = 7.60628 ms, median = 7.16092 ms, percentile(90%) = 10.2996 ms, percentile(95%) = 10.8698 ms, percentile(99%) = 12.9675 ms
[10/03/2024-10:47:59] [I] Enqueue Time: min = 2.72876 ms, max = 15.0201 ms, mean = 7.63062 ms, median = 7.86694 ms, percentile(90%) = 10.1792 ms, percentile(95%) = 11.7217 ms, percentile(99%) = 14.1848 ms
[10/03/2024-10:47:59] [I] H2D Latency: min = 0.0065918 ms, max = 0.0698242 ms, mean = 0.0122212 ms, median = 0.00814819 ms, percentile(90%) = 0.0253906 ms, percentile(95%) = 0.0270996 ms, percentile(99%) = 0.0515137 ms
[10/03/2024-10:47:59] [I] GPU Compute Time: min = 5.34595 ms, max = 13.3388 ms, mean = 7.58404 ms, median = 7.14139 ms, percentile(90%) = 10.2881 ms, percentile(95%) = 10.8175 ms, percentile(99%) = 12.9485 ms
[10/03/2024-10:47:59] [I] D2H Latency: min = 0.00390625 ms, max = 0.110596 ms, mean = 0.0100141 ms, median = 0.00439453 ms, percentile(90%) = 0.0254517 ms, percentile(95%) = 0.0319824 ms, percentile(99%) = 0.0994873 ms
[10/03/2024-10:47:59] [I] Total Host Walltime: 3.00082 s
[10/03/2024-10:47:59] [I] Total GPU Compute Time: 2.96536 s
[10/03/2024-10:47:59] [W] * Throughput may be bound by Enqueue Time rather than GPU Compute and the GPU may be under-utilized.
"""  # noqa: E501

# TensorRT 11.x: the banner and version line as TensorRT 11.1 prints them, and the summary in the format of
# samples/common/sampleReporting.cpp (printProlog/printEpilog, unchanged from 10.x). No public TensorRT 11
# summary was found to copy, so the numbers here are illustrative, consistent with each other.
TRT_11 = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v110100] [b106] # trtexec --onnx=model.onnx --memPoolSize=workspace:1024M
[01/12/2026-09:14:02] [I] TensorRT version: 11.1.0
[01/12/2026-09:14:09] [I] Warmup completed 412 queries over 500 ms
[01/12/2026-09:14:09] [I] Timing trace has 2500 queries over 3.00412 s
[01/12/2026-09:14:09] [I] === Performance summary ===
[01/12/2026-09:14:09] [I] Throughput: 832.2 qps
[01/12/2026-09:14:09] [I] Latency: min = 1.18774 ms, max = 1.47461 ms, mean = 1.19911 ms, median = 1.19629 ms, percentile(90%) = 1.20703 ms, percentile(95%) = 1.21191 ms, percentile(99%) = 1.24512 ms
[01/12/2026-09:14:09] [I] Enqueue Time: min = 0.0107422 ms, max = 0.0820312 ms, mean = 0.0125231 ms, median = 0.012207 ms, percentile(90%) = 0.0136719 ms, percentile(95%) = 0.0146484 ms, percentile(99%) = 0.0195312 ms
[01/12/2026-09:14:09] [I] H2D Latency: min = 0.00512695 ms, max = 0.0195312 ms, mean = 0.00564453 ms, median = 0.00561523 ms, percentile(90%) = 0.00585938 ms, percentile(95%) = 0.00610352 ms, percentile(99%) = 0.00708008 ms
[01/12/2026-09:14:09] [I] GPU Compute Time: min = 1.17578 ms, max = 1.46094 ms, mean = 1.18752 ms, median = 1.18506 ms, percentile(90%) = 1.19531 ms, percentile(95%) = 1.2002 ms, percentile(99%) = 1.23242 ms
[01/12/2026-09:14:09] [I] D2H Latency: min = 0.00415039 ms, max = 0.0109863 ms, mean = 0.00594727 ms, median = 0.00585938 ms, percentile(90%) = 0.00634766 ms, percentile(95%) = 0.00659180 ms, percentile(99%) = 0.0078125 ms
[01/12/2026-09:14:09] [I] Total Host Walltime: 3.00412 s
[01/12/2026-09:14:09] [I] Total GPU Compute Time: 2.9688 s
[01/12/2026-09:14:09] [I] Explanations of the performance metrics are printed in the verbose logs.
&&&& PASSED TensorRT.trtexec [TensorRT v110100] [b106] # trtexec --onnx=model.onnx --memPoolSize=workspace:1024M
"""  # noqa: E501

# trtexec's output wrapped by another tool's logger (ais_bench), verbatim.
WRAPPED = """\
[INFO] [05/27/2023-12:05:31] [I] === Performance summary ===
[INFO] [05/27/2023-12:05:31] [I] Throughput: 120.699 qps
[INFO] [05/27/2023-12:05:31] [I] Latency: min = 9.11414 ms, max = 11.7442 ms, mean = 9.81005 ms, median = 9.76404 ms, percentile(90%) = 10.1075 ms, percentile(95%) = 10.1624 ms, percentile(99%) = 11.4742 ms
[INFO] [05/27/2023-12:05:31] [I] H2D Latency: min = 1.55066 ms, max = 1.57336 ms, mean = 1.55492 ms, median = 1.55444 ms, percentile(90%) = 1.55664 ms, percentile(95%) = 1.55835 ms, percentile(99%) = 1.56458 ms
[INFO] [05/27/2023-12:05:31] [I] GPU Compute Time: min = 7.54407 ms, max = 10.1723 ms, mean = 8.23978 ms, median = 8.19409 ms, percentile(90%) = 8.5354 ms, percentile(95%) = 8.59131 ms, percentile(99%) = 9.90002 ms
[INFO] [05/27/2023-12:05:31] [I] Total GPU Compute Time: 3.00752 s
"""  # noqa: E501

# trtexec failing to build an engine (TensorRT 8.4, NVIDIA/TensorRT issue 1882), verbatim.
ERROR_LOG = """\
[8] Assertion failed: (outDims.nbDims == 1) && "The scales input must be 1D."
[03/26/2022-11:00:30] [E] Failed to parse onnx file
[03/26/2022-11:00:30] [I] Finish parsing network model
[03/26/2022-11:00:30] [E] Parsing model failed
[03/26/2022-11:00:30] [E] Failed to create engine from model.
[03/26/2022-11:00:30] [E] Engine set up failed
&&&& FAILED TensorRT.trtexec [TensorRT v8400] # F:\\Libraries\\TensorRT-8.4.0.6\\bin\\trtexec.exe --onnx=crack_onnx.onnx --saveEngine=crack.trt
"""  # noqa: E501


def test_tensorrt_8_2_summary():
    summary = parse_trtexec_summary(TRT_8_2)
    assert summary.gpu_compute.median_ms == 13.6698
    assert summary.gpu_compute.mean_ms == 13.6963
    assert (summary.gpu_compute.min_ms, summary.gpu_compute.max_ms) == (13.5784, 14.7576)
    assert summary.gpu_compute.percentiles_ms == {99.0: 14.6803}
    assert summary.latency.median_ms == 13.7999  # "Latency", not "H2D Latency" nor "End-to-End Host Latency"
    assert summary.latency.percentiles_ms == {99.0: 14.8121}
    assert summary.throughput_qps == 72.2544
    assert summary.queries == 219  # Total GPU Compute Time / mean: 2999.48 ms / 13.6963 ms
    assert summary.tensorrt_version == "8.2.1"

    result = summary.to_result(backend="jetson", device="NVIDIA Jetson TX2", batch_size=1)
    assert (result.median_ms, result.mean_ms, result.std_ms) == (13.6698, 13.6963, None)
    assert result.p90_ms == 14.6803 and result.facts["p90_from"] == "percentile(99%)"  # 8.2 printed no p90
    assert result.source == "measured" and result.backend == "jetson" and result.runs == 219
    assert result.facts["host_latency_median_ms"] == "13.7999"
    assert result.facts["tensorrt"] == "8.2.1"


def test_tensorrt_10_summary():
    summary = parse_trtexec_summary(TRT_10)
    gpu = summary.gpu_compute
    assert (gpu.min_ms, gpu.max_ms, gpu.mean_ms, gpu.median_ms) == (5.34595, 13.3388, 7.58404, 7.14139)
    assert gpu.percentiles_ms == {90.0: 10.2881, 95.0: 10.8175, 99.0: 12.9485}
    assert summary.latency.median_ms == 7.16092
    assert summary.latency.percentiles_ms[90.0] == 10.2996
    assert summary.queries == 391  # 2965.36 ms / 7.58404 ms
    assert summary.tensorrt_version is None  # the banner is not part of this excerpt

    result = summary.to_result()
    assert result.p90_ms == 10.2881 and "p90_from" not in result.facts
    assert result.backend == "trtexec" and result.source == "measured"


def test_tensorrt_11_summary():
    summary = parse_trtexec_summary(TRT_11)
    assert summary.gpu_compute.median_ms == 1.18506
    assert summary.gpu_compute.tail(90.0) == (90.0, 1.19531)
    assert summary.latency.mean_ms == 1.19911
    assert summary.queries == 2500  # "Timing trace has 2500 queries" wins over the estimate
    assert summary.tensorrt_version == "11.1.0"
    assert summary.throughput_qps == 832.2


def test_summary_wrapped_in_another_log_format():
    summary = parse_trtexec_summary(WRAPPED)
    assert summary.gpu_compute.median_ms == 8.19409
    assert summary.latency.median_ms == 9.76404
    assert summary.queries == 365  # 3007.52 ms / 8.23978 ms


def test_windows_line_endings():
    assert parse_trtexec_summary(TRT_8_2.replace("\n", "\r\n")).gpu_compute.median_ms == 13.6698


@pytest.mark.parametrize(
    ("banner", "version"),
    [("[TensorRT v8201]", "8.2.1"), ("[TensorRT v8603]", "8.6.3"), ("[TensorRT v100200]", "10.2.0")],
)
def test_version_from_banner(banner, version):
    assert tensorrt_version(f"&&&& RUNNING TensorRT.trtexec {banner} # trtexec --onnx=m.onnx") == version


def test_garbage_raises_and_shows_the_text():
    with pytest.raises(
        TrtexecOutputError, match=r"no '=== Performance summary ===' .*2 lines, starting: hello"
    ):
        parse_trtexec_summary("hello\nworld\n")
    with pytest.raises(TrtexecOutputError, match="empty"):
        parse_trtexec_summary("")


def test_error_log_raises_with_its_errors():
    with pytest.raises(TrtexecOutputError) as caught:
        parse_trtexec_summary(ERROR_LOG)
    message = str(caught.value)
    assert isinstance(caught.value, UserError)
    assert "[8] Assertion failed" in message  # the first lines
    assert "Engine set up failed" in message and "FAILED TensorRT.trtexec" in message  # the last errors
    assert "\n" not in message


def test_truncated_summary_raises():
    truncated = "\n".join(TRT_10.splitlines()[:3])  # the mark, Throughput, Latency: no GPU Compute Time
    with pytest.raises(TrtexecOutputError, match="GPU Compute Time"):
        parse_trtexec_summary(truncated)


TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
TIMING = ["--warmUp=500", "--duration=5", "--iterations=100", "--avgRuns=100"]


def test_command_tensorrt_8():
    argv = trtexec_command(TRTEXEC, "/tmp/m.onnx", precision="fp16", workspace_mb=1024, trt_major=8)
    assert argv == [TRTEXEC, "--onnx=/tmp/m.onnx", "--fp16", "--workspace=1024", "--percentile=90", *TIMING]
    fp32 = trtexec_command(TRTEXEC, "/tmp/m.onnx", precision="fp32", workspace_mb=512, trt_major=8)
    assert "--fp16" not in fp32 and "--workspace=512" in fp32


def test_command_tensorrt_10():
    argv = trtexec_command(TRTEXEC, "/tmp/m.onnx", precision="fp16", workspace_mb=1024, trt_major=10)
    assert argv == [TRTEXEC, "--onnx=/tmp/m.onnx", "--fp16", "--memPoolSize=workspace:1024M", *TIMING]


def test_command_tensorrt_11_has_no_precision_flag():
    argv = trtexec_command(TRTEXEC, "/tmp/m.onnx", precision="fp16", workspace_mb=256, trt_major=11)
    assert argv == [TRTEXEC, "--onnx=/tmp/m.onnx", "--memPoolSize=workspace:256M", *TIMING]


def test_command_timing_flags():
    argv = trtexec_command(
        TRTEXEC,
        "m.onnx",
        precision="fp32",
        workspace_mb=64,
        trt_major=10,
        warmup_ms=200,
        duration_s=3,
        iterations=10,
    )
    assert argv[-4:] == ["--warmUp=200", "--duration=3", "--iterations=10", "--avgRuns=100"]


@pytest.mark.parametrize(
    ("settings", "setting"),
    [
        ({"precision": "fp16", "workspace_mb": 1024, "trt_major": 9}, "latency.trt_major"),
        ({"precision": "int8", "workspace_mb": 1024, "trt_major": 8}, "latency.precision"),
        ({"precision": "fp16", "workspace_mb": 0, "trt_major": 10}, "latency.workspace_mb"),
    ],
)
def test_command_rejects_bad_settings(settings, setting):
    with pytest.raises(UserError, match=setting):
        trtexec_command(TRTEXEC, "m.onnx", **settings)
