"""@task and the registry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import app_agent
from app_agent import task
from app_agent._registry import registry
from app_agent.exceptions import TaskRegistrationError


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    saved = registry.all()
    app_agent.reset_registry()
    yield
    app_agent.reset_registry()
    for t in saved:
        registry.add(t.func, alias=t.alias)


def test_plain_and_aliased_tasks_register_by_dotted_path() -> None:
    def first(x: int) -> int:
        return x

    def second() -> None:
        pass

    # Nested functions cannot be reached by a dotted path.
    with pytest.raises(TaskRegistrationError, match="module-level"):
        task(first)

    second.__qualname__ = "second"
    task(name="two")(second)
    found = registry.get(f"{__name__}.second")
    assert found is not None
    assert registry.get("two") is found
    assert found.alias == "two"
    assert found.summary == ""


def test_module_level_task_describes_itself() -> None:
    registry.add(module_task, alias="mt")
    described = registry.get("mt").describe()  # type: ignore[union-attr]
    assert described == {
        "name": f"{__name__}.module_task",
        "alias": "mt",
        "signature": f"{__name__}.module_task(revision: str = 'head', *, dry: bool = False)"
        " -> list[str]",
        "doc": "Apply migrations.",
        "async": False,
        "lock": None,
        "timeout": None,
    }


def test_async_tasks_are_marked() -> None:
    registry.add(async_task)
    assert registry.get(f"{__name__}.async_task").is_async  # type: ignore[union-attr]


def test_alias_collision_is_refused() -> None:
    registry.add(module_task, alias="dup")
    with pytest.raises(TaskRegistrationError, match="already taken"):
        registry.add(async_task, alias="dup")


def test_reregistering_replaces_and_reset_forgets() -> None:
    registry.add(module_task, alias="old")
    registry.add(module_task, alias="new")
    assert registry.get("old") is None
    assert registry.get("new") is not None
    app_agent.reset_registry()
    assert registry.all() == []


def test_binding_shows_the_signature() -> None:
    record = registry.add(module_task)
    assert record.bind(["x"], {"dry": True})[2] == {"revision": "x", "dry": True}
    assert record.bind([], {}) == ((), {}, {})  # the fast path: nothing required
    with pytest.raises(TypeError, match=r"unexpected keyword.*the signature is .*module_task\("):
        record.bind([], {"nope": 1})
    with pytest.raises(TypeError, match="too many positional"):
        record.bind([1, 2], {})


def test_task_modules_import_errors_are_clear() -> None:
    with pytest.raises(TaskRegistrationError, match="cannot import task module 'no_such_mod'"):
        app_agent._registry.import_task_modules(["no_such_mod"])


def module_task(revision: str = "head", *, dry: bool = False) -> list[str]:
    """Apply migrations.

    Details."""
    return [revision]


async def async_task() -> None:
    pass
