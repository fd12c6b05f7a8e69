"""The Redis channel layer, with a bounded connection pool that waits instead of failing.

channels-redis builds a plain redis-py ``ConnectionPool`` per event loop. With redis-py 8 that
pool holds at most 100 connections and refuses the 101st at once ("Too many connections"):
a daphne process reaches that when about a hundred pages (re)connect together, since each
joins its group at once. A ``BlockingConnectionPool`` of the configured size makes the extra
callers wait a moment for a free connection instead (settings ``CHANNEL_LAYER_*``).
"""

from channels_redis.core import RedisChannelLayer
from redis.asyncio import BlockingConnectionPool

# The layer's receive blocks in Redis (BZPOPMIN) this long; a socket timeout must be longer.
RECEIVE_BLOCK_S = RedisChannelLayer.brpop_timeout


class PooledRedisChannelLayer(RedisChannelLayer):
    def create_pool(self, index):
        host = dict(self.hosts[index])
        return BlockingConnectionPool.from_url(host.pop("address"), **host)
