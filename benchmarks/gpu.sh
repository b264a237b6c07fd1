#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md on a GPU machine that cannot reach a package index,
# each part one command writing its figures under OUT (parts: datapath augment packing
# overhead checkpoint study; default: all, which takes longer than one 10-minute call).
#
#   bash benchmarks/gpu.sh OUT [PART ...]
#
# Packages the machine lacks (ray, optuna, kornia, ...) travel as wheels in .whl/ beside this
# project (benchmarks/README.md, "GPU runs", says how to fetch them); they are installed into
# /tmp/site and the project is used from this checkout, without installing it.
set -euo pipefail
OUT=${1:?usage: bash benchmarks/gpu.sh OUT [PART ...]}
shift
mkdir -p "$OUT"
cd "$(dirname "$0")"
if compgen -G "../.whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site \
        ../.whl/*.whl
    export PYTHONPATH="/tmp/site:$(cd .. && pwd)"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
for part in "${@:-datapath augment packing overhead checkpoint study}"; do
    for p in $part; do
        case $p in
            datapath) python3 datapath.py --models none,resnet18,resnet50 --batch-size 64 \
                          --workers 8 --per-class 300 --steps 30 --rounds 3 \
                          --json "$OUT/datapath.json" | tee "$OUT/datapath.txt" ;;
            augment) python3 augment.py --batch 64 --size 224 | tee "$OUT/augment.txt"
                     python3 augment.py --batch 64 --size 224 --profile \
                         | tee "$OUT/augment_profile.txt" ;;
            packing) for model in resnet18 mobilenet_v2 googlenet; do
                         python3 packing.py --model "$model" --trials 8 --epochs 3 \
                             --gpus 1,0.5,0.25 | tee "$OUT/packing_$model.txt"
                     done ;;
            overhead) python3 overhead.py --model resnet18 --trials 4 --epochs 1,5 --rounds 2 \
                          --data /tmp/bench-photos | tee "$OUT/overhead.txt" ;;
            checkpoint) python3 checkpoint.py --rounds 2 | tee "$OUT/checkpoint.txt" ;;
            study) python3 study.py --seeds 3 --image-size 224 --out "$OUT/study.json" \
                       | tee "$OUT/study.txt" ;;
            *) echo "unknown part $p" >&2; exit 2 ;;
        esac
    done
done
