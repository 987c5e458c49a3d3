//! Blocking Redis connections for the task store's pool.

use std::time::Duration;

use redis::Connection;

use crate::TaskError;

/// Blocking connections with a bound on every wait: a Redis that stops
/// answering fails the call after `timeout` instead of holding a thread
/// forever.
#[derive(Clone, Debug)]
pub struct RedisConnector {
    client: redis::Client,
    timeout: Duration,
}

impl RedisConnector {
    /// A pool of up to `size` connections to `client`, each waiting at most `timeout`.
    pub fn pool(client: redis::Client, size: u32, timeout: Duration) -> Result<r2d2::Pool<Self>, TaskError> {
        Ok(r2d2::Pool::builder()
            .max_size(size)
            .connection_timeout(timeout)
            // A broken connection shows in the call that uses it; a PING
            // before every call would double the round trips.
            .test_on_check_out(false)
            .build(RedisConnector { client, timeout })?)
    }
}

impl r2d2::ManageConnection for RedisConnector {
    type Connection = Connection;
    type Error = redis::RedisError;

    fn connect(&self) -> Result<Connection, redis::RedisError> {
        let conn = self.client.get_connection_with_timeout(self.timeout)?;
        conn.set_read_timeout(Some(self.timeout))?;
        conn.set_write_timeout(Some(self.timeout))?;
        Ok(conn)
    }

    fn is_valid(&self, conn: &mut Connection) -> Result<(), redis::RedisError> {
        redis::cmd("PING").query(conn)
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        !redis::ConnectionLike::is_open(conn)
    }
}
