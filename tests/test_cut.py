"""A network cut where its frozen blocks end (trainables/model/cut.py): the two halves are
the network, the suffix trains the network's own parameters, a value read across the cut
(an earlier stage's pooled map) is carried over it, and a graph that depends on training
mode, or nothing frozen first, is not cut."""

import torch
from torch import nn

from trainables.model.cut import cut_at, split_body


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


class EveryStage(Chain):
    """A head that reads the stem's pooled map beside the last one (as ``taps=stages``)."""

    def __init__(self):
        super().__init__()
        self.top = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        early = self.stem(x)
        pooled = early.amax((2, 3))
        late = self.top(self.block(early))
        return self.head(torch.cat([pooled, late.mean((2, 3))], 1))


class ModeDependent(Chain):
    def forward(self, x):
        x = self.stem(x)
        if self.training:  # traced into the graph: a cut would fix one mode
            x = x * 2
        return self.head(self.block(x).mean((2, 3)))


def frozen_names(body: nn.Module, *prefixes: str) -> set[str]:
    return {n for n, _ in body.named_parameters() if n.startswith(prefixes)}


def halves(cut, x):
    with torch.no_grad():
        return cut.suffix(*cut.prefix(x))


def test_the_two_halves_are_the_network_and_the_suffix_trains_its_parameters():
    torch.manual_seed(0)
    body = Chain().eval()
    x = torch.randn(2, 3, 8, 8)
    cut = split_body(body, frozen_names(body, "stem."), x)
    assert cut is not None and cut.at == "stem.2"  # the stem's end: one value read after it
    assert torch.allclose(halves(cut, x), body(x), atol=1e-6)
    before = body.block[0].weight.detach().clone()
    cut.suffix(*cut.prefix(x)).sum().backward()
    torch.optim.SGD(cut.suffix.parameters(), lr=1.0).step()
    assert not torch.equal(body.block[0].weight, before)  # the network's own weights moved
    # the residual's input is read after its block: the cut falls after the sum (as late as
    # it can: the pooling before the head), never inside the block
    after = split_body(body, frozen_names(body, "stem.", "block."), x)
    assert after is not None and after.at == "mean"
    assert torch.allclose(halves(after, x), body(x), atol=1e-6)
    copy = Chain().eval()  # the same cut of another network of the architecture
    assert torch.allclose(halves(cut_at(copy, cut.index), x), copy(x), atol=1e-6)


def test_a_value_read_across_the_cut_is_carried_over_it():
    body = EveryStage().eval()
    x = torch.randn(2, 3, 8, 8)
    cut = split_body(body, frozen_names(body, "stem."), x)
    assert cut is not None
    # as late as it can: after the stem's pooling, so its map and the pooled map cross
    assert [tuple(v.shape) for v in cut.prefix(x)] == [(2, 4, 6, 6), (2, 4)]
    assert torch.allclose(halves(cut, x), body(x), atol=1e-6)
    after = split_body(body, frozen_names(body, "stem.", "block."), x)
    shapes = [tuple(v.shape) for v in after.prefix(x)]
    assert shapes == [(2, 4), (2, 4, 6, 6)]  # the stem's pooled map, and the block's map
    assert torch.allclose(halves(after, x), body(x), atol=1e-6)


def test_no_cut_where_the_graph_depends_on_mode_or_nothing_frozen_comes_first():
    x = torch.randn(2, 3, 8, 8)
    body = ModeDependent()
    assert split_body(body, frozen_names(body, "stem."), x) is None
    chain = Chain()
    assert split_body(chain, set(), x) is None
    assert split_body(chain, frozen_names(chain, "block."), x) is None
