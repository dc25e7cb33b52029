"""The jetson backend against a real OpenSSH server on 127.0.0.1, with a stand-in trtexec on the "device".

The server runs as the current user with a generated host key and a generated client key, and the client
trusts the host only through a known_hosts file written here, exactly as it must trust a real Jetson. The
stand-in trtexec checks its arguments and prints a TensorRT 8.2 run; the bad cases each end in a UserError:
DeviceUnavailable when the device fails (a latency fallback may absorb it), a plain one for a configuration
mistake (which ends the run even with a fallback).
"""

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from torch import nn

from hybridsweep.errors import DeviceUnavailable, UserError
from hybridsweep.metrics.latency import measure_latency
from hybridsweep.metrics.latency.fallback import measure_or_fallback
from hybridsweep.models import build_model

pytestmark = pytest.mark.ssh

SSHD = Path("/usr/sbin/sshd")
SAMPLE = (3, 32, 32)

# A TensorRT 8.2 run as trtexec prints it (format of the JetPack 4.6 log in tests/unit/test_trtexec.py);
# asked for --percentile=90, TensorRT 8.2 prints percentile(90%) where its default prints 99%.
TRT_8_2_RUN = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v8201] # /usr/src/tensorrt/bin/trtexec --onnx=model.onnx --fp16
[05/18/2023-21:52:12] [I] Warmup completed 37 queries over 500 ms
[05/18/2023-21:52:12] [I] Timing trace has 219 queries over 3.03096 s
[05/18/2023-21:52:15] [I] === Performance summary ===
[05/18/2023-21:52:15] [I] Throughput: 72.2544 qps
[05/18/2023-21:52:15] [I] Latency: min = 13.7075 ms, max = 14.8861 ms, mean = 13.8259 ms, median = 13.7999 ms, percentile(90%) = 13.8911 ms
[05/18/2023-21:52:15] [I] End-to-End Host Latency: min = 13.7175 ms, max = 14.9229 ms, mean = 13.8394 ms, median = 13.8109 ms, percentile(90%) = 13.9032 ms
[05/18/2023-21:52:15] [I] Enqueue Time: min = 6.08826 ms, max = 9.51123 ms, mean = 7.35561 ms, median = 7.19287 ms, percentile(90%) = 8.01953 ms
[05/18/2023-21:52:15] [I] H2D Latency: min = 0.117554 ms, max = 0.13623 ms, mean = 0.120202 ms, median = 0.119202 ms, percentile(90%) = 0.122314 ms
[05/18/2023-21:52:15] [I] GPU Compute Time: min = 13.5784 ms, max = 14.7576 ms, mean = 13.6963 ms, median = 13.6698 ms, percentile(90%) = 13.7612 ms
[05/18/2023-21:52:15] [I] D2H Latency: min = 0.00830078 ms, max = 0.0100708 ms, mean = 0.00940053 ms, median = 0.00939941 ms, percentile(90%) = 0.00976562 ms
[05/18/2023-21:52:15] [I] Total Host Walltime: 3.03096 s
[05/18/2023-21:52:15] [I] Total GPU Compute Time: 2.99948 s
[05/18/2023-21:52:15] [I] Explanations of the performance metrics are printed in the verbose logs.
[05/18/2023-21:52:15] [I]
&&&& PASSED TensorRT.trtexec [TensorRT v8201] # /usr/src/tensorrt/bin/trtexec --onnx=model.onnx --fp16
"""  # noqa: E501

# Checks what the backend must pass, records the argv beside itself, writes an "engine" when asked to save one,
# then prints the run above.
GOOD_TRTEXEC = f"""#!/bin/sh
printf '%s\\n' "$@" > "$(dirname "$0")/args.txt"
onnx=""
engine=""
for arg in "$@"; do
  case "$arg" in --onnx=*) onnx="${{arg#--onnx=}}" ;; --saveEngine=*) engine="${{arg#--saveEngine=}}" ;; esac
done
[ -s "$onnx" ] || {{ echo "[E] Cannot open ONNX file: $onnx"; exit 2; }}
[ -z "$engine" ] || printf 'engine of %s' "$(basename "$onnx")" > "$engine"
for flag in --fp16 --workspace=1024 --percentile=90; do
  case " $* " in *" $flag "*) ;; *) echo "[E] missing $flag"; exit 3 ;; esac
done
cat <<'EOF'
{TRT_8_2_RUN}EOF
"""

FAILING_TRTEXEC = """#!/bin/sh
echo '&&&& RUNNING TensorRT.trtexec [TensorRT v8201] # trtexec --onnx=model.onnx --fp16'
echo '[03/26/2022-11:00:30] [E] Failed to parse onnx file'
echo '[03/26/2022-11:00:30] [E] Engine set up failed' >&2
echo '&&&& FAILED TensorRT.trtexec [TensorRT v8201] # trtexec --onnx=model.onnx --fp16'
exit 1
"""

SILENT_TRTEXEC = """#!/bin/sh
echo '&&&& RUNNING TensorRT.trtexec [TensorRT v8201] # trtexec --onnx=model.onnx --fp16'
echo '&&&& PASSED TensorRT.trtexec [TensorRT v8201] # trtexec --onnx=model.onnx --fp16'
"""

# Saves the engine, then fails timing it: the engine must not stay on the device.
SAVES_THEN_FAILS_TRTEXEC = """#!/bin/sh
for arg in "$@"; do case "$arg" in --saveEngine=*) printf 'engine' > "${arg#--saveEngine=}" ;; esac; done
echo '[E] Error[2]: [executionContext.cpp::enqueue] out of memory'
exit 1
"""

HANGING_TRTEXEC = """#!/bin/sh
sleep 30
"""


@dataclass(frozen=True)
class Device:
    port: int
    known_hosts: Path
    key_file: Path
    stranger_key_file: Path  # a valid key the server does not authorise
    trtexec: Path  # in a folder with a space in its name: the argv must be quoted, not spliced
    remote_dir: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)


def wait_for_port(port: int, server: subprocess.Popen, log: Path, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"sshd exited with status {server.returncode}: {log.read_text()}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"sshd did not listen on 127.0.0.1:{port} within {within_s} s: {log.read_text()}")


@pytest.fixture(scope="session")
def device(tmp_path_factory):
    if not SSHD.exists():
        message = "sshd not installed: apt-get install openssh-server"
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # in CI a missing service is a broken setup, not a reason to skip
        pytest.skip(message)
    root = tmp_path_factory.mktemp("ssh")
    for name in ("host_key", "client_key", "stranger_key"):
        keygen(root / name)
    shutil.copy(root / "client_key.pub", root / "authorized_keys")
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {root / 'host_key'}\n"
        f"PidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "Subsystem sftp internal-sftp\n"
        "LogLevel VERBOSE\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    log = root / "sshd.log"
    with open(log, "wb") as log_file:
        server = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log_file, stderr=log_file)
    try:
        wait_for_port(port, server, log)
        key_type, key_body = (root / "host_key.pub").read_text().split()[:2]
        known_hosts = root / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {key_type} {key_body}\n")
        trtexec = root / "device bin" / "trtexec"
        trtexec.parent.mkdir()
        yield Device(
            port=port,
            known_hosts=known_hosts,
            key_file=root / "client_key",
            stranger_key_file=root / "stranger_key",
            trtexec=trtexec,
            remote_dir=root / "remote",
        )
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def install_trtexec(device: Device, script: str) -> None:
    device.trtexec.write_text(script)
    device.trtexec.chmod(0o755)


def settings(device: Device, cache_dir: Path, **overrides) -> dict:
    return {
        "host": "127.0.0.1",
        "port": device.port,
        "user": getpass.getuser(),
        "key_file": str(device.key_file),
        "known_hosts": str(device.known_hosts),
        "trtexec": str(device.trtexec),
        "remote_dir": str(device.remote_dir),
        "cache_dir": str(cache_dir),
        "timeout_s": 20,
        "connect_timeout_s": 5,
        **overrides,
    }


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


def test_measures_on_the_device_then_serves_the_cache(device, tmp_path):
    install_trtexec(device, GOOD_TRTEXEC)
    model = small_net()
    result = measure_latency(model, "jetson", input_shape=SAMPLE, **settings(device, tmp_path))

    assert result.source == "measured" and result.backend == "jetson" and result.batch_size == 1
    assert (result.median_ms, result.p90_ms, result.mean_ms) == (13.6698, 13.7612, 13.6963)
    assert result.runs == 219 and result.std_ms is None
    assert "p90_from" not in result.facts  # a true p90: the backend asked trtexec 8.2 for it
    assert result.facts["tensorrt"] == "8.2.1"  # from trtexec's banner: no dpkg tensorrt package here
    assert result.facts["host"] == f"127.0.0.1:{device.port}"
    assert result.device == result.facts.get("device_model", "127.0.0.1")  # no device tree on this machine

    argv = (device.trtexec.parent / "args.txt").read_text().splitlines()
    assert argv[0].startswith(f"--onnx={device.remote_dir}/") and argv[0].endswith(".onnx")
    assert argv[1:] == [
        "--fp16",
        "--workspace=1024",
        "--percentile=90",
        "--warmUp=500",
        "--duration=5",
        "--iterations=100",
        "--avgRuns=100",
    ]
    assert list(device.remote_dir.glob("*.onnx")) == []  # the copied model is removed after the run

    install_trtexec(device, FAILING_TRTEXEC)  # a second run would now fail: the cache must answer
    again = measure_latency(model, "jetson", input_shape=SAMPLE, **settings(device, tmp_path))
    assert again == result
    # Another batch size is another ONNX file: not in the cache, so it reaches the failing trtexec.
    with pytest.raises(DeviceUnavailable, match="latency.trtexec: trtexec exited with status 1"):
        measure_latency(model, "jetson", input_shape=SAMPLE, **settings(device, tmp_path, batch_size=2))


def test_unreachable_port(device, tmp_path):
    with pytest.raises(DeviceUnavailable, match=r"latency\.host: cannot reach .*127\.0\.0\.1.*latency\.port"):
        measure_latency(small_net(), "jetson", input_shape=SAMPLE, **settings(device, tmp_path, port=free_port()))


def test_unknown_host_key_is_refused(device, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(
        UserError, match=rf"latency\.known_hosts: \[127\.0\.0\.1\]:{device.port} is not in .*SHA256:"
    ) as caught:
        measure_latency(small_net(), "jetson", input_shape=SAMPLE, **settings(device, tmp_path, known_hosts=empty))
    assert type(caught.value) is UserError  # a configuration mistake, not an unavailable device


def test_unauthorised_key_is_refused(device, tmp_path):
    stranger = settings(device, tmp_path, key_file=str(device.stranger_key_file))
    with pytest.raises(UserError, match=r"latency\.key_file: .* refused the key") as caught:
        measure_latency(small_net(), "jetson", input_shape=SAMPLE, **stranger)
    assert type(caught.value) is UserError


def test_failing_trtexec(device, tmp_path):
    install_trtexec(device, FAILING_TRTEXEC)
    with pytest.raises(DeviceUnavailable, match="latency.trtexec: trtexec exited with status 1") as caught:
        measure_latency(small_net(), "jetson", input_shape=SAMPLE, **settings(device, tmp_path))
    assert "Engine set up failed" in str(caught.value)  # stderr comes back too


def test_trtexec_without_summary(device, tmp_path):
    install_trtexec(device, SILENT_TRTEXEC)
    with pytest.raises(DeviceUnavailable, match=r"latency\.trtexec: .*no '=== Performance summary ===' .*PASSED"):
        measure_latency(small_net(), "jetson", input_shape=SAMPLE, **settings(device, tmp_path))


def test_trtexec_not_found(device, tmp_path):
    missing = settings(device, tmp_path, trtexec=str(device.trtexec.parent / "no-such-trtexec"))
    with pytest.raises(UserError, match=r"latency\.trtexec: .*no-such-trtexec not found") as caught:
        measure_latency(small_net(), "jetson", input_shape=SAMPLE, **missing)
    assert type(caught.value) is UserError


def test_trtexec_that_cannot_be_executed(device, tmp_path):
    folder = settings(device, tmp_path, trtexec=str(device.trtexec.parent))  # the folder, not the binary
    with pytest.raises(UserError, match=r"latency\.trtexec: .*device bin on .* cannot be executed") as caught:
        measure_latency(small_net(), "jetson", input_shape=SAMPLE, **folder)
    assert type(caught.value) is UserError


def test_timeout_stops_the_run(device, tmp_path):
    install_trtexec(device, HANGING_TRTEXEC)
    with pytest.raises(DeviceUnavailable, match=r"latency\.timeout_s: .*within 1 s"):
        measure_latency(small_net(), "jetson", input_shape=SAMPLE, **settings(device, tmp_path, timeout_s=1))


def test_fallback_covers_a_failed_run_but_not_a_mistake(device, tmp_path, capsys):
    """With `fallback: lut` a failing trtexec gives a tagged prediction; a configuration mistake still fails."""
    model = build_model("resnet20", num_classes=10)  # the lut predictor covers CIFAR ResNets only
    with_fallback = {"backend": "jetson", "fallback": "lut", **settings(device, tmp_path)}
    install_trtexec(device, FAILING_TRTEXEC)
    result, tags = measure_or_fallback(model, with_fallback, input_shape=SAMPLE)
    assert result.source == "predicted" and result.backend == "lut" and tags["latency.fallback"] == "lut"
    assert tags["latency.error"].startswith("latency.trtexec: trtexec exited with status 1")
    capsys.readouterr()

    install_trtexec(device, GOOD_TRTEXEC)  # would measure, but each mistake stops the run before it
    mistakes = {
        "trtexec": (str(device.trtexec.parent / "no-such-trtexec"), r"latency\.trtexec: .*no-such-trtexec not found"),
        "remote_dir": ("/proc/hybridsweep", r"latency\.remote_dir: cannot create /proc/hybridsweep"),
        "known_hosts": (str(tmp_path / "no-known_hosts"), r"latency\.known_hosts: .*no-known_hosts does not exist"),
    }
    for setting, (value, message) in mistakes.items():
        with pytest.raises(UserError, match=message) as caught:
            measure_or_fallback(model, {**with_fallback, setting: value}, input_shape=SAMPLE)
        assert type(caught.value) is UserError, setting
    assert "warning" not in capsys.readouterr().err


def test_task_export_builds_the_engine_on_the_device_and_fetches_it(device, tmp_path):
    """export.engine=jetson: trtexec on the device builds the engine (with the latency=jetson flags) and the file
    comes back; nothing is left in remote_dir."""
    from hybridsweep.deploy import build_engine
    from tests.helpers import compose_config

    install_trtexec(device, GOOD_TRTEXEC)
    cfg = compose_config("task=export", "export.engine=jetson", "latency=jetson",
                         *(f"latency.{k}={v}" for k, v in settings(device, tmp_path).items()))
    out = tmp_path / "model.engine"
    engine = build_engine(cfg, small_net(), SAMPLE, out)

    argv = (device.trtexec.parent / "args.txt").read_text().splitlines()
    onnx_name = Path(argv[0].removeprefix("--onnx=")).name
    assert argv[-1] == f"--saveEngine={device.remote_dir}/{onnx_name.removesuffix('.onnx')}.engine"
    assert "--fp16" in argv and "--workspace=1024" in argv  # the device's own latency settings
    assert engine.path == out and out.read_text() == f"engine of {onnx_name}"
    assert engine.facts["tensorrt"] == "8.2.1" and engine.facts["device_median_ms"] == "13.67"
    assert list(device.remote_dir.iterdir()) == []  # the model and the engine are removed there

    install_trtexec(device, SAVES_THEN_FAILS_TRTEXEC)
    with pytest.raises(DeviceUnavailable, match="trtexec exited with status 1 .*out of memory"):
        build_engine(cfg, small_net(), SAMPLE, tmp_path / "failed.engine")
    assert list(device.remote_dir.iterdir()) == [] and not (tmp_path / "failed.engine").exists()

    ratio_only = compose_config("task=export", "export.engine=jetson")
    with pytest.raises(UserError, match="export.engine=jetson builds on the device of latency=jetson"):
        build_engine(ratio_only, small_net(), SAMPLE, out)
