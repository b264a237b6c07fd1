"""Per-trial resource requests, against the nodes a cluster reports."""

import pytest

from sweeps.driver.cluster import resources
from trainables.core.errors import UserError
from trainables.model.factory import MODELS

GPU_NODE = [{"CPU": 16.0, "GPU": 1.0}]
CPU_NODE = [{"CPU": 2.0, "GPU": 0.0}]


@pytest.mark.parametrize("model", MODELS.names())
def test_each_model_asks_for_its_own_gpu_share(model):
    assert resources(None, None, GPU_NODE, (model,))["gpu"] == MODELS[model].gpu_share


def test_a_mixed_sweep_asks_for_the_largest_share_and_the_user_wins():
    small = [n for n in MODELS if MODELS[n].gpu_share < 1]
    large = [n for n in MODELS if MODELS[n].gpu_share == 1]
    assert small and large  # both kinds exist, so the rule below is exercised
    assert resources(None, None, GPU_NODE, (small[0], large[0]))["gpu"] == 1.0
    assert resources(None, None, GPU_NODE, tuple(small))["gpu"] == max(
        MODELS[n].gpu_share for n in small
    )
    assert resources(None, 0.25, GPU_NODE, (large[0],))["gpu"] == 0.25
    assert resources(None, None, GPU_NODE, ())["gpu"] == 1.0


def test_no_gpu_means_cpu_trials_and_an_impossible_request_is_an_error():
    assert resources(None, None, CPU_NODE, ("resnet18",), concurrent=4) == {"cpu": 1.0, "gpu": 0.0}
    with pytest.raises(UserError, match="fits on no node.*largest has 2 CPUs, 0 GPUs"):
        resources(None, 1.0, CPU_NODE, ("resnet18",))
    with pytest.raises(UserError, match="cpus_per_trial=4"):
        resources(4.0, None, CPU_NODE)


def test_a_trial_gets_its_part_of_the_node_unless_told():
    gpu_box = [{"CPU": 16.0, "GPU": 1.0}]
    small = next(n for n in MODELS if MODELS[n].gpu_share == 0.5)
    assert resources(None, None, gpu_box, (small,))["cpu"] == 8.0  # two trials per GPU
    assert resources(None, None, gpu_box, ("resnet50",))["cpu"] == 16.0
    assert resources(None, 0.25, gpu_box, ("resnet50",))["cpu"] == 4.0
    assert resources(None, None, CPU_NODE, ("resnet18",), concurrent=12)["cpu"] == 1.0
    assert resources(None, None, CPU_NODE, ("resnet18",), concurrent=1)["cpu"] == 2.0
    assert resources(3.0, None, gpu_box, (small,))["cpu"] == 3.0  # the user's word wins
    # a cluster of unequal nodes: a share every GPU node can hold
    mixed = [{"CPU": 4.0, "GPU": 0.0}, {"CPU": 8.0, "GPU": 1.0}, {"CPU": 32.0, "GPU": 4.0}]
    assert resources(None, 1.0, mixed, ("resnet50",))["cpu"] == 8.0
