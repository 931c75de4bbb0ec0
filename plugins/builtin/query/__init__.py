"""Query and download (数据访问下载, a built-in service): a consumer holding a ``query``
grant reads a resource page by page from its holder: the center's shared library, or
the owning bureau through the center (逻辑集中、适度分布), sealed end to end to the
requester either way.

- Filters, fields and order are structured (``exnode.policies.filters``) and compiled
  with SQLAlchemy at the holder: a value like ``' OR 1=1 --`` is data, never SQL.
- The holder applies the grant: only its fields (a field outside it is refused), its
  row filter ANDed with the request's, its masking rules (脱敏) on the values before
  they leave; its rate and daily quota count each page.
- Pages are pulled: the requester asks for the next page after the last key it wrote
  (keyset pagination; or an offset when it asked for an order), so memory is one page
  at each end whatever the size, a cut download resumes from the last page written
  (``formats.Download``), and a revoked or expired grant stops a download at its next
  page.
- Each page is logged at the holder (who asked, which resource, how many rows), at the
  center (its relay entries), and at the requester; never the values or the filter's
  values.

Packages: ``query-req`` requester -> holder, ``query-page`` holder -> requester.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from exnode.node.kernel.api import ServiceAPI
from exnode.plugins import hookimpl

if TYPE_CHECKING:
    from .service import QueryService


@hookimpl
def exnode_services(api: ServiceAPI) -> QueryService:
    from .service import QueryService

    return QueryService(api)


@hookimpl
def exnode_cli_commands(cli: click.Group) -> None:
    from .cli import query

    cli.add_command(query)

