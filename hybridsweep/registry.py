"""A tiny name -> factory registry shared by criteria, models and latency backends.

An unknown name raises a `UserError` that lists what exists, so a typo on the command line is a one-line fix.
"""

from collections.abc import Callable
from typing import Generic, TypeVar

from hybridsweep.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, setting: str):
        self.kind = kind  # what is registered, for messages ("criterion")
        self.setting = setting  # the config key users type ("criterion")
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def add(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return add

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._factories[name]
        except KeyError:
            raise UserError(
                f"unknown {self.kind} {name!r} for {self.setting}; choose one of: {', '.join(self.names())}"
            ) from None

    def build(self, name: str, *args, **kwargs) -> T:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: str) -> bool:
        return name in self._factories
