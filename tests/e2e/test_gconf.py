"""The signed global configuration never goes back: a bureau keeps the highest version
it has taken in its state DB, so an older gconf (which may still list a member revoked
since) is refused even after the cache file is gone."""

from __future__ import annotations

import asyncio
import shutil

import aiomqtt

from exnode.node.kernel import identity as idn
from exnode.node.tools.cluster import wait_until


def test_gconf_rollback_after_the_cache_is_lost_is_refused(make_star, own_mosquitto,
                                                           tmp_path):
    star = make_star(own_mosquitto)
    star.up()
    cache = star.dir("b1") / "keys" / idn.GCONF_CACHE
    old_blob = tmp_path / "old-gconf.cbor"
    shutil.copy(cache, old_blob)  # a gconf in which b2 is an approved member
    old_version = star.status("b1")["gconf"]["version"]

    # b2 is revoked; b1 takes the new version
    assert star.cli("center", "nodes", "revoke", "b2").returncode == 0
    wait_until(lambda: "b2" not in star.status("b1")["members"], 30, 0.2,
               "b1 to drop the revoked b2")
    new_version = star.status("b1")["gconf"]["version"]
    assert new_version > old_version

    # b1 loses its cache; an attacker leaves the old (validly signed, unexpired) gconf
    # as the retained message, in place of the center's
    star.stop("b1")
    cache.unlink()
    async def retain_old() -> None:
        async with aiomqtt.Client(star.host, star.port) as c:
            await c.publish(star.topics.gconf, old_blob.read_bytes(), qos=1, retain=True)

    asyncio.run(retain_old())
    star.start("b1", wait=False)
    wait_until(lambda: "gconf_refused" in (star.dir("b1") / "daemon.log").read_text(), 30,
               0.2, "b1 to refuse the old gconf")
    st = star.status("b1")
    assert st["gconf"]["version"] != old_version and "b2" not in st["members"], st
    log = (star.dir("b1") / "daemon.log").read_text()
    assert f"version {old_version} is older than version {new_version}" in log

    # the center publishes again: b1 takes the current one
    star.call("center", "POST", "/gconf/publish", {})
    wait_until(lambda: star.status("b1")["gconf"]["version"] > new_version, 30, 0.2,
               "b1 to take the new gconf")
    assert "b2" not in star.status("b1")["members"]
