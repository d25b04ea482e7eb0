//! A real redis-server for the tests: started from PATH on a Unix socket in
//! a fresh directory (no port to race for), persistence off.

use std::path::PathBuf;
use std::process::{Child, Command};

use crate::process::{Log, kill, spawn_ready};

/// A redis-server child process, on its own Unix socket.
pub struct RedisServer {
    dir: PathBuf,
    child: Option<Child>,
    /// `redis+unix:///...` URL of the server.
    pub url: String,
}

impl RedisServer {
    /// Starts redis-server and waits until it accepts connections.
    pub fn start() -> RedisServer {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("imcloud-redis-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis test dir");
        let url = format!("redis+unix://{}", dir.join("redis.sock").display());
        let mut server = RedisServer {
            dir,
            child: None,
            url,
        };
        server.restart();
        server
    }

    /// Starts the server (again) on the same socket.
    pub fn restart(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(self.dir.join("redis.sock"))
            .arg("--dir")
            .arg(&self.dir);
        self.child = Some(spawn_ready(
            command,
            Log::Stdout,
            "ready to accept connections",
            "Debian: apt-get install -y redis-server",
        ));
    }

    /// Kills the server, as a crash would.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
