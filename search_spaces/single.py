"""One configuration: the defaults, changed with --set or --config (e.g. a best_config.json
that a search saved). A baseline, and the way to re-run a found configuration in full."""

from search_spaces import Space

SPACE = Space(
    name="single",
    description="one trial of the default configuration, as changed by --set / --config "
    "(--num-samples repeats it with other seeds)",
    param_space={},
    variant_keys=("model",),
)
