"""The regional board: household electricity pooled across the municipalities of a region.

A regional body (an energy syndicate) reads, through its own governed role, the pools its
contracts with several municipalities allow (governed.regional_pools, the function the API's
/v1/regional calls): one series per municipality, the regional total, and the district pools,
each released under the strictest pool minimum of its owners (docs/organisations.md).
"""

from __future__ import annotations

from typing import Final

from grafana_foundation_sdk.builders import table, timeseries

from grafana.model import REGION_UID, Board, Query, Variable

# The interval of the region's contracts: hourly pools are released by the platform's upkeep
# (`silobreak up`); 15-minute pools as the API reads them.
WIDTHS: Final = ("1 hour", "15 minutes")
_POOLS: Final = "regional_pools('meter', '$width'::interval, $__timeFrom(), $__timeTo())"


def region(timezone: str) -> Board:
    b = Board(
        "region", "silobreak-region", "Region: electricity by municipality", REGION_UID,
        timezone,
        "Household electricity meters pooled across the municipalities whose contracts the "
        "datasource you read as holds: never one household, never a district below its "
        "owners' pool minimum, never a total that would reveal one.",
    )  # fmt: skip
    b.choose_datasource()
    b.variable(Variable("width", "Contract interval", options=WIDTHS, multi=False))
    b.add(
        timeseries.Panel().title("Mean flow per meter, by municipality").unit("kW")
        .height(9).span(16),
        Query(
            "SELECT bucket AS time, array_to_string(organisations, ' + ') AS metric,"
            " avg AS value\nFROM " + _POOLS
            + "\nWHERE metric = 'flow' AND level IN ('organisation', 'region')"
            "\nORDER BY 1, 2",
            ("time", "metric", "value"),
        ),
    )  # fmt: skip
    b.add(
        timeseries.Panel().title("Meters in each total").unit("short").height(9).span(8),
        Query(
            "SELECT bucket AS time, array_to_string(organisations, ' + ') AS metric,"
            " devices AS value\nFROM " + _POOLS
            + "\nWHERE metric = 'flow' AND level IN ('organisation', 'region')"
            "\nORDER BY 1, 2",
            ("time", "metric", "value"),
        ),
    )  # fmt: skip
    b.add(
        table.Panel().title("District pools over the range").height(10).span(24),
        Query(
            "SELECT array_to_string(organisations, ' + ') AS organisations, district,"
            " sum(sum) / sum(count) AS mean_flow, max(devices) AS meters, count(*) AS buckets"
            "\nFROM " + _POOLS + "\nWHERE metric = 'flow' AND level = 'district'"
            "\nGROUP BY 1, 2 ORDER BY 1, 2",
            ("organisations", "district", "mean_flow", "meters", "buckets"), "table",
        ),
    )  # fmt: skip
    return b
