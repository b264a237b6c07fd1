"""Per-trial resource requests, against the nodes a cluster reports."""
from argparse import Namespace

import pytest

from sweeps.cluster import resources
from trainables.errors import UserError

GPU_NODE = [{"CPU": 16.0, "GPU": 1.0}]
CPU_NODE = [{"CPU": 2.0, "GPU": 0.0}]


def ask(gpus=None, cpus=1.0):
    return Namespace(gpus_per_trial=gpus, cpus_per_trial=cpus)


def test_small_models_share_a_gpu_by_default_and_larger_ones_do_not():
    assert resources(ask(), GPU_NODE, ("resnet18", "small_cnn")) == {"cpu": 1.0, "gpu": 0.5}
    assert resources(ask(), GPU_NODE, ("resnet18", "resnet50")) == {"cpu": 1.0, "gpu": 1.0}
    assert resources(ask(), GPU_NODE, ()) == {"cpu": 1.0, "gpu": 1.0}
    assert resources(ask(0.25), GPU_NODE, ("resnet50",)) == {"cpu": 1.0, "gpu": 0.25}


def test_no_gpu_means_cpu_trials_and_an_impossible_request_is_an_error():
    assert resources(ask(), CPU_NODE, ("resnet18",)) == {"cpu": 1.0, "gpu": 0.0}
    with pytest.raises(UserError, match="fits on no node.*largest has 2 CPUs, 0 GPUs"):
        resources(ask(1.0), CPU_NODE, ("resnet18",))
    with pytest.raises(UserError, match="--cpus-per-trial 4"):
        resources(ask(cpus=4.0), CPU_NODE)
