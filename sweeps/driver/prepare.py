"""What the driver does once before any trial: find, split and decode the images, say what in
the data deserves a look, and make sure each model's pretrained weights are here."""

from __future__ import annotations

import sys

from sweeps.driver.spec import SMOKE_IMAGES_PER_CLASS, SweepSpec
from trainables import data as D
from trainables.core.config import TrialConfig
from trainables.core.errors import UserError
from trainables.model.record import preprocess_for
from trainables.recipe.losses import grade_ranks

IMBALANCE_WARNING_RATIO = 3.0


def prepare_data(spec: SweepSpec, cfgs: list[TrialConfig]) -> tuple[D.DataHandle, dict]:
    """The data handle every trial gets, and the data report."""
    cache_dir = D.default_cache_dir()
    source = D.discover(D.resolve_data(spec.data, cache_dir))
    for cfg in cfgs:  # ordered classes named right, before any decoding
        grade_ranks(cfg.class_order, source.class_names)
    per_class = SMOKE_IMAGES_PER_CLASS if spec.smoke else spec.max_per_class
    if per_class:
        source = D.limit_per_class(source, per_class)
    if spec.split_file:
        if source.presplit:
            raise UserError(
                f"`split_file` conflicts with `data={source.root}`, which is "
                "already split into train/ val/ test/; drop `split_file`"
            )
        source = D.apply_split_file(source, spec.split_file, resumed=spec.resume)
    sizes = sorted({(p.load_size, p.interpolation) for p in map(preprocess_for, cfgs)})
    handle, report = D.prepare(
        source,
        sizes[0][0],
        cache_dir,
        split_seed=spec.split_seed or 0,
        interpolation=sizes[0][1],
        folds=spec.folds or 0,
    )
    for load_size, interpolation in sizes[1:]:
        handle.images(load_size, interpolation, progress=True)  # here, not in racing trials
    skipped = report["images_skipped"]
    print(
        f"data: {report['images_used']} images in {len(handle.class_names)} classes "
        f"from {source.root}"
        + (f"; skipped {skipped} unreadable (see data_report.json)" if skipped else ""),
        file=sys.stderr,
    )
    for line in data_warnings(report):
        print(f"warning: {line}", file=sys.stderr)
    return handle, report


def data_warnings(report: dict) -> list[str]:
    """What in the data deserves a look before trusting the table."""
    lines = []
    if report["leakage"]:
        lines.append(
            f"{len(report['leakage'])} image(s) appear in more than one split (same "
            "bytes): test scores are inflated; see 'leakage' in data_report.json"
        )
    if report["label_conflicts"]:
        lines.append(
            f"{len(report['label_conflicts'])} image(s) appear under different "
            "classes; see 'label_conflicts' in data_report.json"
        )
    empty = [
        f"{name} in {split}/"
        for name, counts in report["counts"].items()
        for split, n in counts.items()
        if n == 0
    ]
    empty += [
        f"{name} in fold {fold}"
        for name, counts in report.get("folds", {}).items()
        for fold, n in enumerate(counts)
        if n == 0
    ]
    if empty and report["presplit"]:
        lines.append(
            f"no usable image of {', '.join(empty)}: such a class is not trained, "
            "validated or tested there; add images to those folders"
        )
    elif empty:  # split here: only copies of one image, which stay together, leave a gap
        lines.append(
            f"no image of {', '.join(empty)}: copies of one image always share a "
            "split, and this class has too few distinct images (see "
            "duplicate_images in data_report.json), so it is not validated or "
            "tested there; add distinct images of it"
        )
    if report["imbalance_ratio"] >= IMBALANCE_WARNING_RATIO:
        lines.append(
            f"classes are imbalanced (largest/smallest training class = "
            f"{report['imbalance_ratio']:g}); watch test_macro_f1, and consider "
            "--set objective=weighted_ce or --set sampler=balanced"
        )
    return lines


def check_weights(cfgs: list[TrialConfig]) -> tuple[str, ...]:
    """Fetch each model's pretrained weights once, before the trials ask for them.
    Returns the models whose weights cannot be had (their trials train from scratch)."""
    from trainables.model.factory import fetch_pretrained, model_spec
    from trainables.model.families import family_of
    from trainables.model.weights import hub_reachable, use_hub_offline, weights_unavailable

    wanted = sorted(
        {
            (c.model, c.weights)
            for c in cfgs
            if c.pretrained != "false" and family_of(model_spec(c.model)).has_weights
        }
    )  # small_cnn has none
    if any(family_of(model_spec(m)).from_hub for m, _ in wanted) and not hub_reachable():
        use_hub_offline()
    unavailable = []
    for model, tag in wanted:
        reason = fetch_pretrained(model, tag)
        if reason is None:
            continue
        if any(c.model == model and c.pretrained == "true" for c in cfgs):
            raise weights_unavailable(model, reason, tag)
        print(
            f"warning: no pretrained weights for {model} ({reason}); its trials train from "
            f"random initialisation (pretrained=False in the table)",
            file=sys.stderr,
        )
        unavailable.append(model)
    return tuple(unavailable)
