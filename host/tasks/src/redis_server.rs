//! A throwaway `redis-server` on a free loopback port, for tests (this
//! crate's and the integration tests'). Nothing is persisted; the server
//! dies with the value.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// Starts one and waits until it answers. Panics, saying what to
    /// install, where `redis-server` is missing (`.ci/run` installs it).
    pub fn start() -> RedisServer {
        // The free port is found by binding and letting go: another process
        // may take it first, in which case this server exits and another
        // port is tried (rather than talking to someone else's server).
        for _ in 0..5 {
            let port =
                std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("starting redis-server ({e}): install it, e.g. `apt-get install redis-server`")
                });
            let mut server = RedisServer { child, port };
            let client = server.client();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break;
                }
                if client.get_connection().and_then(|mut c| redis::cmd("PING").query::<String>(&mut c)).is_ok() {
                    return server;
                }
                assert!(Instant::now() < deadline, "redis-server on port {port} did not answer within 10 s");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("redis-server exited at start five times (ports taken?)");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a valid URL")
    }

    pub fn pool(&self) -> r2d2::Pool<crate::RedisConnector> {
        crate::RedisConnector::pool(self.client(), 4, Duration::from_secs(5)).expect("a pool")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
