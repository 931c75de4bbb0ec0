"""Verification without disclosure (数据检查比对, 核验; a built-in service): a consumer holding
a ``verify`` grant sends records (a key and the values it believes), and the holder of
the data answers, per record, whether the key was found and, per checked field, whether
the value matches. The answer holds booleans only, never a value.

- The holder is where the catalog says the data is answered from: the center's shared
  library, or the owning bureau through the center (the center relays the sealed request
  only when the sender holds a grant in force; the holder checks it again, and checks
  that every checked field is inside it).
- Both sides are cleaned with the resource's own cleaning steps (trim, full-width to
  half-width, ...: ``resources.X.quality.clean``) before they are compared, and compared
  as text in one canonical form (dates ISO, decimals without trailing zeros).
- Each request counts against the grant's rate (requests a minute) and daily quota
  (records a day); both are refused with a one-line reason when exceeded.
- Every request is logged at the holder with counts: who asked, how many records, how
  many found; never keys or values.

Packages: ``check-req`` consumer -> holder, ``check-res`` holder -> consumer (relayed by
the center when the holder is a bureau).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from exnode.node.kernel.api import ServiceAPI
from exnode.plugins import hookimpl

if TYPE_CHECKING:
    from .service import VerificationService


@hookimpl
def exnode_services(api: ServiceAPI) -> VerificationService:
    from .service import VerificationService

    return VerificationService(api)


@hookimpl
def exnode_cli_commands(cli: click.Group) -> None:
    from .cli import verify

    cli.add_command(verify)
