"""The root error of the devices package."""


class DevicesError(Exception):
    """Something about a device, its type or the registry is wrong."""


class RegistryImportError(DevicesError):
    """A registry import file has bad rows; nothing was imported."""

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        lines = "; ".join(f"line {n}: {why}" for n, why in problems[:20])
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        super().__init__(f"{len(problems)} bad row(s), nothing imported: {lines}{more}")


class CatalogError(DevicesError):
    """A device catalog file (or the one recorded in the database) is not a valid catalog."""
