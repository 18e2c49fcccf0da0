"""URL parsing of the deployments (minique/urls.py): one server, Redis Cluster, Sentinel."""
from __future__ import annotations

import pytest

from minique import urls
from minique.exceptions import ConfigurationError


def test_single_server_urls_pass_through_unchanged():
    for url in ("redis://localhost:6379/3", "rediss://u:p@h:6380/0", "unix:///tmp/r.sock?db=2",
                "redis+embedded:///tmp/dir?db=1"):
        target = urls.parse(url)
        assert target.kind == "redis" and target.url == url


@pytest.mark.parametrize("scheme,ssl", [("redis+cluster", False), ("rediscluster", False), ("rediss+cluster", True)])
def test_cluster_url_nodes_and_credentials(scheme, ssl):
    target = urls.parse(f"{scheme}://user:p%40ss@host1:7000,host2:7001,[::1]:7002,host3/")
    assert target.kind == "cluster"
    assert target.nodes == (("host1", 7000), ("host2", 7001), ("::1", 7002), ("host3", 6379))
    assert (target.username, target.password, target.db, target.ssl) == ("user", "p@ss", 0, ssl)


def test_cluster_url_database_zero_is_accepted_and_others_refused():
    assert urls.parse("redis+cluster://h:7000/0").db == 0
    with pytest.raises(ConfigurationError, match="Redis Cluster has only database 0.*database 3"):
        urls.parse("redis+cluster://h:7000/3")


@pytest.mark.parametrize("url,match", [
    ("redis+cluster://h:7000/?db=1", "no query parameters"),
    ("redis+cluster:///", "at least one node"),
    ("redis+cluster://h:70000/", "bad port"),
    ("redis+cluster://h:7000/x", "database number"),
])
def test_bad_cluster_urls_say_why(url, match):
    with pytest.raises(ConfigurationError, match=match):
        urls.parse(url)


def test_sentinel_url_as_kombu_spells_it():
    target = urls.parse("sentinel://:secret@s1:26379/2;sentinel://s2:26380;sentinel://s3",
                        {"master_name": "mymaster", "sentinel_kwargs": {"password": "sp"}, "min_other_sentinels": 1})
    assert target.kind == "sentinel"
    assert target.nodes == (("s1", 26379), ("s2", 26380), ("s3", 26379))
    assert (target.password, target.username, target.db) == ("secret", None, 2)
    assert target.master_name == "mymaster"
    assert target.sentinel_kwargs == {"password": "sp"} and target.min_other_sentinels == 1


def test_sentinel_url_needs_master_name():
    with pytest.raises(ConfigurationError, match="master_name"):
        urls.parse("sentinel://s1:26379", {})
    with pytest.raises(ConfigurationError, match="result_backend_transport_options"):
        urls.parse("sentinel://s1:26379", {}, "result_backend")


@pytest.mark.parametrize("url,options,match", [
    ("sentinel://s1/1;sentinel://s2/2", {"master_name": "m"}, "different databases"),
    ("sentinel://:a@s1;sentinel://:b@s2", {"master_name": "m"}, "different passwords"),
    ("sentinel://s1;redis://s2", {"master_name": "m"}, "every part"),
    ("sentinel://s1", {"master_name": "m", "min_other_sentinels": -1}, "min_other_sentinels"),
    ("sentinel://s1", {"master_name": "m", "sentinel_kwargs": "x"}, "sentinel_kwargs"),
])
def test_bad_sentinel_urls_say_why(url, options, match):
    with pytest.raises(ConfigurationError, match=match):
        urls.parse(url, options)


def test_not_a_url():
    with pytest.raises(ConfigurationError, match="must be a URL"):
        urls.parse("localhost:6379")
