//! Redis connections that wait as long as their caller says. The redis crate gives every
//! async connection a 500 ms response timeout and a 1 s connect timeout unless told otherwise:
//! below every bound this code sets around its Redis calls (a setup's 2 s, the activity read's
//! 3 s, revocation pruning's 10 s), so a stall of half a second failed them all early — a setup
//! answered 503 where a moment's wait would have served it. Every connection here is made
//! through these two functions with the caller's deadline as both its connect timeout (which
//! covers the handshake, answered only when Redis is free) and its response timeout.

use std::time::Duration;

use redis::{
    AsyncConnectionConfig, RedisResult,
    aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
};

/// A multiplexed connection that gives up connecting, and each command, after `deadline`.
pub async fn multiplexed(
    client: &redis::Client,
    deadline: Duration,
) -> RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(deadline))
        .set_response_timeout(Some(deadline));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// A connection manager (reconnects by itself) that gives up connecting, and each command,
/// after `deadline`.
pub async fn manager(client: &redis::Client, deadline: Duration) -> RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(deadline))
        .set_response_timeout(Some(deadline));
    ConnectionManager::new_with_config(client.clone(), config).await
}
