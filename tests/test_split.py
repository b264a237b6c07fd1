"""A network cut where its frozen blocks end (trainables/model/split.py): the two halves are
the network, the suffix trains the network's own parameters, and a graph that depends on
training mode, or nothing frozen first, is not cut."""

import torch
from torch import nn

from trainables.model.split import same_output, split_body


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.block(x)  # a residual: no cut inside it
        return self.head(x.mean((2, 3)))


class ModeDependent(Chain):
    def forward(self, x):
        x = self.stem(x)
        if self.training:  # traced into the graph: a cut would fix one mode
            x = x * 2
        return self.head(self.block(x).mean((2, 3)))


def frozen_names(body: nn.Module, *prefixes: str) -> set[str]:
    return {n for n, _ in body.named_parameters() if n.startswith(prefixes)}


def test_the_two_halves_are_the_network_and_the_suffix_trains_its_parameters():
    torch.manual_seed(0)
    body = Chain()
    cut = split_body(body, frozen_names(body, "stem."))
    assert cut is not None and cut.at == "stem.2"  # the stem's end: one value read after it
    x = torch.randn(2, 3, 8, 8)
    assert same_output(body, cut, x)
    before = body.block[0].weight.detach().clone()
    cut.suffix(cut.prefix(x)).sum().backward()
    torch.optim.SGD(cut.suffix.parameters(), lr=1.0).step()
    assert not torch.equal(body.block[0].weight, before)  # the network's own weights moved
    # the residual's input is read after its block: the cut falls after the sum (as late as
    # it can: the pooling before the head), never inside the block
    after = split_body(body, frozen_names(body, "stem.", "block."))
    assert after is not None and after.at == "mean" and same_output(body, after, x)


def test_no_cut_where_the_graph_depends_on_mode_or_nothing_frozen_comes_first():
    body = ModeDependent()
    assert split_body(body, frozen_names(body, "stem.")) is None
    chain = Chain()
    assert split_body(chain, set()) is None
    assert split_body(chain, frozen_names(chain, "block.")) is None
