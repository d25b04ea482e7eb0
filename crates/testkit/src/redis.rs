//! A real redis-server for the tests: started from PATH on a Unix socket in
//! a fresh directory (no port to race for), persistence off.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

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
        let socket = self.dir.join("redis.sock");
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(&socket)
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot start redis-server ({err}): the Redis tests need it on PATH \
                     (Debian: apt-get install -y redis-server)"
                )
            });
        let stdout = child.stdout.take().expect("redis stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.to_lowercase().contains("ready to accept connections"));
        assert!(ready, "redis-server exited before it was ready");
        // Keep reading so redis never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        self.child = Some(child);
    }

    /// Kills the server, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
