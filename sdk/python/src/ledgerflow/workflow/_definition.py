"""Authoring: ``@workflow.defn`` turns an ``async def`` into a registered workflow.

One form, class-free: a workflow is an ``async def body(ctx, input)`` (or
``async def body(ctx)`` for a workflow without input) decorated with
``@workflow.defn(name=..., version=...)``. The input and the return value are
converted by the body's type hints (see ``_convert``). A class form (Temporal's
``@workflow.defn class`` + ``@workflow.run``) was rejected: it adds a second
place to put state that does not survive replay, and ledgerflow has no signal
or query handlers that would need the methods yet.

There is no hidden global registry (unlike a module-level dict filled by the
decorator, which makes two test modules with a same-named workflow collide).
The worker builds a :class:`Registry` from the workflows it serves, e.g. every
definition found in a module with :meth:`Registry.from_module`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, overload

from ledgerflow.errors import WorkflowNotFoundError, WorkflowUsageError
from ledgerflow.ledger import check_id
from ledgerflow.workflow._convert import param_hints

if TYPE_CHECKING:
    from ledgerflow.workflow._context import WorkflowContext

InT = TypeVar("InT")
OutT = TypeVar("OutT")


@dataclass(frozen=True, eq=False)
class WorkflowDefinition(Generic[InT, OutT]):
    """A workflow body with the name and version the coordinator knows it by.

    Calling the definition calls the body, which is handy in unit tests with a
    context of your own; workers run it through ``WorkflowExecution``.

    Attributes:
        name: The registered name, e.g. ``"order.checkout"``.
        version: The version, empty when unversioned.
        fn: The body.
        takes_input: Whether the body takes an input argument after ``ctx``.
        input_type: The input's type hint (None when absent).
        output_type: The return type hint (None when absent).
    """

    name: str
    version: str
    fn: Callable[..., Awaitable[OutT]]
    takes_input: bool = True
    input_type: Any = field(default=None, repr=False)
    output_type: Any = field(default=None, repr=False)

    def __call__(self, ctx: WorkflowContext, input: InT) -> Awaitable[OutT]:
        """Call the body (outside a worker, e.g. in a unit test)."""
        if self.takes_input:
            return self.fn(ctx, input)
        return self.fn(ctx)


class _Decorator(Protocol):
    @overload
    def __call__(
        self, fn: Callable[[WorkflowContext, InT], Awaitable[OutT]], /
    ) -> WorkflowDefinition[InT, OutT]: ...
    @overload
    def __call__(
        self, fn: Callable[[WorkflowContext], Awaitable[OutT]], /
    ) -> WorkflowDefinition[None, OutT]: ...


@overload
def defn(
    fn: Callable[[WorkflowContext, InT], Awaitable[OutT]], /
) -> WorkflowDefinition[InT, OutT]: ...
@overload
def defn(fn: Callable[[WorkflowContext], Awaitable[OutT]], /) -> WorkflowDefinition[None, OutT]: ...
@overload
def defn(*, name: str | None = None, version: str = "") -> _Decorator: ...
def defn(
    fn: Callable[..., Awaitable[Any]] | None = None,
    /,
    *,
    name: str | None = None,
    version: str = "",
) -> WorkflowDefinition[Any, Any] | _Decorator:
    """Declare a workflow: ``@workflow.defn`` or ``@workflow.defn(name=..., version=...)``.

    Example::

        @workflow.defn(name="order.checkout", version="2")
        async def checkout(ctx: workflow.Context, order: Order) -> Receipt:
            charge = await ctx.step("charge", charge_card, order, compensate=refund_card)
            return Receipt(order_id=order.id, charge_id=charge.id)

    Args:
        fn: The body, when used without arguments.
        name: The registered name; defaults to the function's name.
        version: The version; empty when unversioned.

    Returns:
        The definition, or a decorator that makes one.

    Raises:
        WorkflowUsageError: If the body is not an ``async def`` taking ``(ctx)`` or
            ``(ctx, input)``, or the name is not a usable id.
    """

    def make(body: Callable[..., Awaitable[Any]]) -> WorkflowDefinition[Any, Any]:
        return _make_definition(body, name, version)

    if fn is not None:
        return make(fn)
    return make


def _make_definition(
    body: Callable[..., Awaitable[Any]], name: str | None, version: str
) -> WorkflowDefinition[Any, Any]:
    if not inspect.iscoroutinefunction(body):
        raise WorkflowUsageError(
            f"workflow body {getattr(body, '__qualname__', body)!r} must be an async def"
        )
    workflow_name = name if name is not None else body.__name__
    try:
        check_id(workflow_name, "name")
    except ValueError as err:
        raise WorkflowUsageError(f"workflow name {workflow_name!r}: {err}") from err
    params = [
        p
        for p in inspect.signature(body).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(params) not in (1, 2):
        raise WorkflowUsageError(
            f"workflow body {body.__qualname__!r} must take (ctx) or (ctx, input), "
            f"not {len(params)} required positional parameters"
        )
    hints = param_hints(body)
    takes_input = len(params) == 2
    return WorkflowDefinition(
        name=workflow_name,
        version=version,
        fn=body,
        takes_input=takes_input,
        input_type=hints.get(params[1].name) if takes_input else None,
        output_type=hints.get("return"),
    )


class Registry:
    """The workflows a worker serves, by name and version.

    ``get(name, version)`` returns the exact (name, version) registration or,
    failing that, the one unversioned definition of that name, which serves every
    version.
    """

    def __init__(self, definitions: Iterable[WorkflowDefinition[Any, Any]] = ()) -> None:
        """Create a registry holding ``definitions``.

        Args:
            definitions: Definitions to register.

        Raises:
            WorkflowUsageError: If two different definitions share a name and version.
        """
        self._by_key: dict[tuple[str, str], WorkflowDefinition[Any, Any]] = {}
        for definition in definitions:
            self.register(definition)

    @classmethod
    def from_module(cls, module: ModuleType) -> Registry:
        """Register every workflow definition that is a global of ``module``.

        Args:
            module: An imported module.

        Returns:
            A registry of its workflows, in definition order.
        """
        return cls(v for v in vars(module).values() if isinstance(v, WorkflowDefinition))

    def register(self, definition: WorkflowDefinition[Any, Any]) -> None:
        """Add a definition; registering the same definition again does nothing.

        Args:
            definition: The definition.

        Raises:
            WorkflowUsageError: If another definition has the same name and version.
        """
        key = (definition.name, definition.version)
        existing = self._by_key.get(key)
        if existing is not None and existing is not definition:
            shown = f"{definition.name!r} version {definition.version!r}"
            raise WorkflowUsageError(f"two workflows are registered as {shown}")
        self._by_key[key] = definition

    def get(self, name: str, version: str = "") -> WorkflowDefinition[Any, Any]:
        """Return the definition serving ``name`` at ``version``.

        Args:
            name: The workflow name, as in ``WorkflowTask.workflow_name``.
            version: The version, as in ``WorkflowTask.workflow_version``.

        Returns:
            The exact registration, else the unversioned definition of ``name``, else
            (for an unversioned ``version``) the only definition of ``name``.

        Raises:
            WorkflowNotFoundError: If neither is registered.
        """
        found = self._by_key.get((name, version)) or self._by_key.get((name, ""))
        if found is None and not version:
            # An unversioned task and a single versioned registration: that one.
            named = [d for (n, _), d in self._by_key.items() if n == name]
            found = named[0] if len(named) == 1 else None
        if found is None:
            known = ", ".join(sorted({n for n, _ in self._by_key})) or "none"
            raise WorkflowNotFoundError(
                f"no workflow {name!r} (version {version!r}) is registered; known: {known}"
            )
        return found

    def __iter__(self) -> Iterator[WorkflowDefinition[Any, Any]]:
        """Iterate over the definitions, in registration order."""
        return iter(self._by_key.values())

    def __len__(self) -> int:
        """Return how many definitions are registered."""
        return len(self._by_key)
