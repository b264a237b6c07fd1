"""Name -> thing registries, one mechanism for every kind: a factory registers itself
with a decorator (as timm's ``register_model`` does), an adapter class with
``register_instance``, a record (a model's ``ModelSpec``, a study's ``Space``) with ``add``
where it is defined. The allowed values of a config key are its registry's names, so a new
optimizer, loss, schedule, strategy or augmentation recipe is one function; a name given
twice is refused when its module is imported, and an unknown name is answered with the
nearest registered one.

Each registry is filed under its config key, so the config checks a name against
``choices()`` without importing the factories (they import the config for its type).
``choices()`` loads the factory modules named in FACTORIES on its first call, so that their
registries are full: a command that checks no config (--help, --list-spaces, a bad flag)
does not pay for importing torch."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from trainables.core.errors import UserError

T = TypeVar("T")

_BY_KEY: dict[str, Registry] = {}
# the modules whose factories register names of config keys
FACTORIES = (
    "trainables.recipe.augment",
    "trainables.recipe.losses",
    "trainables.recipe.optim",
    "trainables.recipe.strategies",
)


def choices() -> dict[str, tuple[str, ...]]:
    """Every checked config key's allowed values: its registry's names."""
    import importlib

    for module in FACTORIES:  # each registers as it is imported (once; cached after)
        importlib.import_module(module)
    return {key: registry.names() for key, registry in _BY_KEY.items()}


def did_you_mean(name: object, names: Iterable[str]) -> str:
    """`` (did you mean 'X'?)`` for the one of ``names`` nearest ``name``, or ""."""
    close = difflib.get_close_matches(str(name), list(names), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    def __init__(self, kind: str, checked: bool = True):
        """``kind``: the config key whose values this registry names. ``checked``: the key
        takes only these names (False where other names are valid too, as timm's models)."""
        self.kind = kind
        self._items: dict[str, T] = {}
        if checked:
            if kind in _BY_KEY:
                raise ValueError(f"a registry for '{kind}' exists already")
            _BY_KEY[kind] = self

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@LOSSES.register("focal")`` above a factory (or a value passed to it)."""

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._items[name] = item
            return item

        return add

    def register_instance(self, name: str) -> Callable[[type], type]:
        """Class decorator: ``@FAMILIES.register_instance("timm")`` above a stateless
        adapter class registers one instance of it (the class itself is returned)."""

        def add(cls: type) -> type:
            self.add(name, cls())
            return cls

        return add

    def add(self, name: str, item: T) -> T:
        return self.register(name)(item)

    def hint(self, name: object) -> str:
        return did_you_mean(name, self._items)

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __getitem__(self, name: str) -> T:
        if name not in self._items:
            raise UserError(
                f"bad value {self.kind}={name!r}{self.hint(name)}: "
                f"choose one of {', '.join(self._items)}"
            )
        return self._items[name]
