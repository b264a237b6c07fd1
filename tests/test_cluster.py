"""A real two-node Ray cluster on this machine: a head and a worker started as separate
processes (``ray start``), and a sweep submitted to it with --address. The head has no CPUs
for trials, so every trial must run on the worker node, away from the driver, and its
results, checkpoints and table row come back through the shared storage.

Ray advertises a node's network address, not loopback, whenever one exists, so the whole
cluster runs inside a private network namespace that has nothing but loopback: every byte
stays on 127.0.0.1.
"""

import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers import ROOT, make_image_folder

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
CLUSTER_SCRIPT = r"""
set -u
ip link set lo up
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN={token} PYTHONWARNINGS=ignore
ADDRESS=127.0.0.1:{port}
"{bin}/ray" start --head --port {port} --num-cpus 0 --num-gpus 0 --include-dashboard false \
    --disable-usage-stats --block > "{logs}/head.log" 2>&1 &
HEAD=$!
# one Python process joins and watches the cluster until it has $1 live nodes (while the
# process $2, if given, lives): polling with a new process each second costs a core
nodes() {{ "{bin}/python" -c "
import os, sys, time, ray
ray.init(address='$ADDRESS', logging_level='ERROR')
want, pid, deadline = int(sys.argv[1]), int(sys.argv[2]), time.monotonic() + 60
while True:
    alive = [n for n in ray.nodes() if n['Alive']]
    if len(alive) >= want or time.monotonic() > deadline:
        break
    try:
        pid and os.kill(pid, 0)
    except OSError:
        break
    time.sleep(0.5)
print(len(alive), *[n['NodeID'][:8] for n in alive if n['Resources'].get('CPU')])
" "$1" "${{2:-0}}" 2>/dev/null; }}
for i in $(seq 120); do (echo > /dev/tcp/127.0.0.1/{port}) 2>/dev/null && break; sleep 0.5; done
nodes 1 > /dev/null
# Ray gives a starting node 30 s (hard-coded) to register: on a loaded 2-core machine its
# raylet can miss that, and the node's `ray start` gives up; it is started again, twice at most
for attempt in 1 2 3; do
    "{bin}/ray" start --address $ADDRESS --num-cpus 2 --num-gpus 0 --disable-usage-stats \
        --block >> "{logs}/worker.log" 2>&1 &
    WORKER=$!
    UP=$(nodes 2 $WORKER)
    [ "${{UP%% *}}" = 2 ] && break
    kill -TERM $WORKER 2>/dev/null; wait $WORKER 2>/dev/null
    echo "worker node start $attempt failed" >&2
done
echo "nodes up: ${{UP%% *}}"
echo "worker node: ${{UP#* }}"
"{bin}/python" "{root}/sweeps/run.py" --address $ADDRESS {args}
CODE=$?
kill -TERM $WORKER; wait $WORKER
kill -TERM $HEAD; wait $HEAD
exit $CODE
"""


def _can_make_network_namespace() -> bool:
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(
    not _can_make_network_namespace(),
    reason="needs unshare -n (root) for a loopback-only network namespace",
)
def test_a_sweep_on_a_two_node_cluster_runs_its_trials_on_the_worker_node(tmp_path):
    data = make_image_folder(tmp_path / "imgs", per_class=20)
    with socket.socket() as s:  # any free port; the namespace has its own port space anyway
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = (
        f"--space single --set model=small_cnn --set image_size=32 --max-epochs 2 "
        f"--num-samples 4 --data '{data}' --storage '{tmp_path / 'runs'}' --name two"
    )
    script = CLUSTER_SCRIPT.format(
        token=secrets.token_hex(16), port=port, bin=BIN, logs=tmp_path, root=ROOT, args=args
    )
    try:
        result = subprocess.run(
            ["unshare", "-n", "bash", "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:  # `ray start` records its cluster for later ray.init() calls; it is gone now
        record = Path("/tmp/ray/ray_current_cluster")
        if record.exists() and record.read_text().strip().endswith(f":{port}"):
            record.unlink()
    worker_log = (tmp_path / "worker.log").read_text()[-1500:]
    assert "nodes up: 2" in result.stdout, (
        result.stdout[-2000:] + result.stderr[-2000:] + worker_log
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # 4 trials on 2 CPUs: the worker node's workers are handed on, and each hand-on waited
    # for the finished trial's thread as long as the trainable sets (not Tune's 2 s)
    assert "Could not re-use actor" not in result.stderr, result.stderr[-3000:]
    worker = result.stdout.split("worker node:", 1)[1].split()[0]
    table = pd.read_csv(tmp_path / "runs" / "two" / "results.csv", dtype={"node": str})
    assert len(table) == 4 and (table["stop_reason"] == "completed").all()
    assert (table["node"] == worker).all()  # every trial ran on the other node's worker
    assert len(list((tmp_path / "runs" / "two").glob("*/checkpoint_*/predictions.npz"))) == 4


def test_cluster_yaml_is_valid_for_the_pinned_ray_and_keeps_ports_closed():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` does: defaults, then the schema
    text = (ROOT / "cluster.yaml").read_text()
    readme = (ROOT / "README.md").read_text()
    install = "pip install torch==2.14.1 torchvision==0.29.1 -e ."
    assert install in readme and any(install in c for c in config["setup_commands"])
    for node in config["available_node_types"].values():
        assert "IpPermissions" not in str(node["node_config"])  # no port opened to the world
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "--ray-client-server-port" not in start
    for secret in ("aws_secret_access_key", "AKIA", "password", "token:"):
        assert secret not in text
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert config["available_node_types"]["head"]["resources"].get("GPU", 0) == 0
