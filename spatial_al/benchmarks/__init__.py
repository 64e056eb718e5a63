"""Benchmark commands: figures printed as a table and written as JSON with the run's configuration and versions.

Benchmarks are not tests: they measure, they do not assert. Run them with ``spatial-al benchmark NAME``.
"""

from collections.abc import Iterator, Sequence

from ..progress import ProgressReporter, report
from ..registry import Registry


def checked_names(registry: Registry, names: Sequence[str] | None) -> list[str]:
    """``names`` (default: all of ``registry``); an unknown one fails with the closest valid name."""
    names = list(names or registry.names())
    for name in names:
        registry.get(name)
    return names


def each_entry(registry: Registry, names: Sequence[str] | None, progress: ProgressReporter | None) -> Iterator[str]:
    """The ``names`` (default: all of ``registry``) one at a time, reporting progress; an unknown name fails before
    any measurement, with the closest valid one."""
    names = checked_names(registry, names)
    for index, name in enumerate(names):
        report(progress, index, len(names), name)
        yield name
    report(progress, len(names), len(names))
