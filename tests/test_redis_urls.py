"""Store URLs: one server, Sentinel, Cluster; what Celery gets; what the settings refuse; hash tags."""

import pytest
from pydantic import ValidationError
from redis.cluster import key_slot

from shared import keys, redis_urls
from shared.settings import Settings


def test_a_sentinel_url_names_its_sentinels_db_and_master():
    target = redis_urls.parse("sentinel://:s3cret@h1:26379,h2:26380/2?master=turnstream-broker")
    assert target.sentinel and not target.cluster
    assert target.hosts == (("h1", 26379), ("h2", 26380))
    assert (target.db, target.password, target.master) == (2, "s3cret", "turnstream-broker")
    # kombu and Celery's result backend read one sentinel:// per host and the master from the options.
    assert target.celery_url() == "sentinel://:s3cret@h1:26379/2;sentinel://:s3cret@h2:26380/2"
    assert target.celery_transport_options() == {"master_name": "turnstream-broker"}


def test_a_cluster_url_lists_startup_nodes_and_has_no_db():
    target = redis_urls.parse("cluster://n1:7000,n2:7001")
    assert target.cluster and target.hosts == (("n1", 7000), ("n2", 7001)) and target.db == 0


def test_a_plain_url_is_unchanged_for_celery():
    target = redis_urls.parse("redis://127.0.0.1:6391/0")
    assert target.kind == redis_urls.SINGLE and target.celery_url() == "redis://127.0.0.1:6391/0"


@pytest.mark.parametrize("url, problem", [
    ("sentinel://h1:26379/0", "must name its master"),
    ("cluster://n1:7000/3", "DB 0 only"),
    ("sentinel://h1/0?master=m", "host:port"),
    ("memcached://h1:11211", "unknown Redis URL scheme"),
])
def test_unreadable_urls_say_what_is_wrong(url, problem):
    with pytest.raises(redis_urls.BadRedisUrl, match=problem):
        redis_urls.parse(url)


def test_settings_refuse_a_broker_on_a_cluster_and_a_cluster_in_single_instance_mode():
    with pytest.raises(ValidationError, match="BROKER_REDIS_URL cannot be a cluster"):
        Settings(broker_redis_url="cluster://n1:7000")
    with pytest.raises(ValidationError, match="REDIS_URL cannot be a cluster"):
        Settings(redis_url="cluster://n1:7000")
    assert Settings(redis_url="sentinel://h1:26379/0?master=m").store_target("auth_memo").db == 3


def test_what_a_script_or_mget_touches_together_shares_a_slot():
    assert len({key_slot(k.encode()) for k in (keys.progress_log("s1", "m1"), keys.progress_marker("s1", "m1", "x"),
                                               keys.progress_channel("s1", "m1"))}) == 1
    call = ("weather", "global", "ab" * 32)
    assert len({key_slot(k(*call).encode()) for k in (keys.exec_result, keys.exec_lease, keys.exec_done)}) == 1
    user_slot = {key_slot(k.encode()) for k in (keys.auth_memo("acme", "alice", "weather"),
                                                keys.auth_memo("acme", "alice", "calculator"),
                                                keys.auth_generation_user("alice"))}
    shared_slot = {key_slot(k.encode()) for k in (keys.auth_generation_all(), keys.auth_generation_tenant("acme"),
                                                  keys.auth_generation_tool("weather"))}
    assert len(user_slot) == 1 and len(shared_slot) == 1
    # Turns spread over the slots instead of piling on one shard.
    assert len({key_slot(keys.progress_log("s1", f"m{i}").encode()) for i in range(50)}) > 40
