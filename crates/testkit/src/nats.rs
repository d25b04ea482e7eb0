//! A real nats-server with JetStream for the tests: started from PATH on a
//! port of its own, its store in a fresh directory, restartable on the same
//! port and store (a crash and its return), killable.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};

use crate::process::{Log, kill, spawn_ready};

/// A nats-server child process with JetStream on.
pub struct NatsServer {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
}

impl NatsServer {
    /// Starts nats-server with JetStream and waits until it is ready.
    pub fn start() -> NatsServer {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("imcloud-nats-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("nats test dir");
        // nats-server takes a port, not a listener: take one the OS gives.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut server = NatsServer {
            dir,
            port,
            child: None,
            url: format!("nats://127.0.0.1:{port}"),
        };
        server.restart();
        server
    }

    /// Starts the server (again) on the same port and store.
    pub fn restart(&mut self) {
        let mut command = Command::new("nats-server");
        command
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir);
        self.child = Some(spawn_ready(
            command,
            Log::Stderr,
            "Server is ready",
            "Debian: apt-get install -y nats-server",
        ));
    }

    /// Kills the server, as a crash would.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_server_starts_with_jetstream_and_comes_back_on_its_port() {
        let mut nats = NatsServer::start();
        let addr = nats.url.trim_start_matches("nats://").to_owned();
        assert!(std::net::TcpStream::connect(&addr).is_ok());
        nats.kill();
        assert!(std::net::TcpStream::connect(&addr).is_err(), "killed");
        nats.restart();
        assert!(std::net::TcpStream::connect(&addr).is_ok(), "back");
    }
}
