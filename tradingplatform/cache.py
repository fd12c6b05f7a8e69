"""Django's Redis cache, reusing one ``redis.Redis`` per connection pool.

Django's client builds a new ``redis.Redis`` for every cache call; with redis-py 8 that
means rebuilding its table of response callbacks each time, a measurable part of an
order's CPU. A ``redis.Redis`` is safe to share between threads (each command takes a
connection from the pool), so one per pool is enough.
"""

from django.core.cache.backends import redis as django_redis


class ReusingRedisCacheClient(django_redis.RedisCacheClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._clients = {}

    def get_client(self, key=None, *, write=False):
        pool = self._get_connection_pool(write)
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients[id(pool)] = self._client(connection_pool=pool)
        return client


class RedisCache(django_redis.RedisCache):
    def __init__(self, server, params):
        super().__init__(server, params)
        self._class = ReusingRedisCacheClient
