"""--storage as a cloud URI: an S3 server (moto) on loopback stands in for the bucket;
Ray Tune's checkpoints, the trials' files and our result table all land in it."""

import io
import json

import pandas as pd
import pytest

from helpers import make_image_folder, run_cli
from sweeps.experiment.storage import Store
from trainables.core.errors import UserError

pytestmark = pytest.mark.integration


@pytest.fixture
def s3(monkeypatch):
    """A real S3 API on 127.0.0.1 with one bucket; yields the storage URI for it."""
    moto_server = pytest.importorskip("moto.server")
    import boto3

    for key, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(key, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="sweeps")
    yield f"s3://sweeps/runs?endpoint_override={endpoint}&region=us-east-1"
    server.stop()


def test_store_writes_reads_and_refuses_what_it_cannot_write(s3, tmp_path):
    store = Store(s3, "exp")
    assert not store.has_content()
    store.check_writable(s3)
    store.write_text("a/b.txt", "héllo")
    assert store.exists("a/b.txt") and store.read_text("a/b.txt") == "héllo"
    assert store.has_content()
    again = Store.from_location(store.location)
    assert again.name == "exp" and again.read_text("a/b.txt") == "héllo"
    store.remove()
    assert not store.has_content()
    from trainables.core.errors import UserError

    bad = s3.replace("s3://sweeps/", "s3://no-such-bucket/")
    with pytest.raises(UserError, match="cannot write there"):
        Store(bad, "exp").check_writable(bad)


def test_a_sweep_with_s3_storage_puts_everything_in_the_bucket(s3, tmp_path):
    data = make_image_folder(tmp_path / "imgs", per_class=10)
    result = run_cli(
        [
            "--space",
            "single",
            "--set",
            "model=small_cnn",
            "--set",
            "image_size=32",
            "--max-epochs",
            "2",
            "--num-samples",
            "2",
            "--data",
            str(data),
            "--storage",
            s3,
            "--name",
            "cloud",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    store = Store(s3, "cloud")
    table = pd.read_csv(io.StringIO(store.read_text("results.csv")))
    assert len(table) == 2 and (table["epochs"] == 2).all()
    assert "By variant" in store.read_text("results.md")
    assert json.loads(store.read_text("sweep.json"))["args"]["storage"] == s3
    assert store.read_text("split.csv").startswith("path,class,label,split")
    import pyarrow.fs

    files = [
        f.path for f in store.fs.get_file_info(pyarrow.fs.FileSelector(store.root, recursive=True))
    ]
    assert sum(f.endswith("predictions.npz") for f in files) == 2  # each trial's checkpoint
    assert any("events.out.tfevents" in f for f in files)  # TensorBoard, synced by Tune
    assert not (tmp_path / "runs").exists()  # nothing went to a local folder instead
    # Tune's state in the bucket is sealed (sweeps/driver/seal.py): a resume would open it,
    # and a crafted tuner.pkl put there instead is refused before Tune reads it
    from sweeps.driver.seal import SEAL, check_sealed

    assert SEAL in store.top_files() and "tuner.pkl" in store.top_files()
    check_sealed(store)
    with store.fs.open_output_stream(f"{store.root}/tuner.pkl") as crafted:
        crafted.write(b"not the sweep's own")
    with pytest.raises(UserError, match="tuner.pkl is not sealed under your key"):
        check_sealed(store)
