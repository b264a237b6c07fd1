"""Pretrained weights on this machine: list what each model has, add a local file.

    python sweeps/weights.py list [--model NAME]
    python sweeps/weights.py add FILE --model NAME [--weights TAG]

``list`` shows every registered model's weights variants, the default one, and whether each
is on this machine (and where). ``add`` checks that FILE holds that model's weights (every
key and shape; for a file named as torchvision publishes it, its sha256) and puts it where
trials look for it, so an offline machine trains from it with ``--set pretrained=true``
(and ``--set weights=TAG`` for a variant other than the default). On a cluster, run ``add``
on every node.
"""

from __future__ import annotations

from sweeps import cli
from trainables.model import weights as W
from trainables.model.zoo import MODELS, model_spec


def list_weights(models: list[str]) -> int:
    for name in models:
        spec = model_spec(name)
        variants = W.variants(spec)
        if not variants:
            print(
                f"{name} ({spec.family}): no pretrained weights; trains from random initialisation"
            )
            continue
        have = sum(v.path is not None for v in variants)
        print(f"{name} ({spec.family}): {len(variants)} variant(s), {have} on this machine")
        for v in variants:
            mark = " (default)" if v.default else ""
            where = f"here: {v.path}" if v.path else f"missing (looked for {v.expected})"
            print(f"  {v.tag}{mark}: {where}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, "python sweeps/weights.py")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=cli.Parser)
    listing = commands.add_parser("list", help="every model's weights variants and where they are")
    listing.add_argument(
        "--model", action="append", help="only this model (repeatable; any timm name works)"
    )
    adding = commands.add_parser("add", help="check a weights file and put it where trials find it")
    adding.add_argument("file", metavar="FILE")
    adding.add_argument("--model", required=True, help="the model the file belongs to")
    adding.add_argument(
        "--weights",
        default="",
        metavar="TAG",
        help="the variant it is (default: read from a published file name, "
        "else the library's default)",
    )
    args = parser.parse_args(argv)
    if args.command == "list":
        return list_weights(args.model or list(MODELS))
    added = W.add(args.file, args.model, args.weights)
    check = (
        "sha256 matches its published name"
        if added.verified
        else "not a published file name, so no checksum to compare"
    )
    print(
        f"added {args.model} weights {added.tag} -> {added.path} (every key and shape "
        f"checked; {check})"
    )
    print(f"use: --set model={args.model} --set pretrained=true --set weights={added.tag}")
    return 0


def cli_main() -> None:
    cli.run(main)


if __name__ == "__main__":
    cli.as_process(cli_main)
