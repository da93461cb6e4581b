"""What the etcd repositories use of their backend: keys holding JSON, read and written in
one optimistic transaction (:class:`~gitorch.state.etcd.backend.EtcdBackend` is the one
implementation; the repositories know only this, so the backend that assembles them is
the only module that knows both)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class KeyValue(Protocol):
    """A namespace of etcd keys seen by a repository."""

    clock: Callable[[], float]

    def atomic(self, work: Callable[[], T]) -> T: ...

    def get(self, key: str) -> Any: ...

    def peek(self, key: str) -> Any: ...

    def range(self, prefix: str) -> list[tuple[str, Any]]: ...

    def read_many(self, *keys: tuple[str, bool]) -> list[list[tuple[str, Any]]]: ...

    def scan(
        self, prefix: str, *, descending: bool = False, page: int | None = 20
    ) -> Iterator[Any]: ...

    def put(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> None: ...

    def next_id(self, sequence: str) -> int: ...

    def now(self, at: float | None) -> float: ...
