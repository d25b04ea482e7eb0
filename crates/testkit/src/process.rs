//! A server the tests run as a child process (redis-server, nats-server):
//! spawned, waited for until its log says it is ready, its log drained so it
//! never blocks on a full pipe, killed like a crash.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

/// Which stream the server logs its readiness on.
pub(crate) enum Log {
    Stdout,
    Stderr,
}

/// Spawns `command` and returns once a line of its `log` contains `ready`.
/// A missing binary fails with `install` (what to install).
pub(crate) fn spawn_ready(mut command: Command, log: Log, ready: &str, install: &str) -> Child {
    let program = command.get_program().to_string_lossy().into_owned();
    match log {
        Log::Stdout => command.stdout(Stdio::piped()),
        Log::Stderr => command.stderr(Stdio::piped()),
    };
    let mut child = command.spawn().unwrap_or_else(|err| {
        panic!("cannot start {program} ({err}): the tests need it on PATH ({install})")
    });
    let output: Box<dyn Read + Send> = match log {
        Log::Stdout => Box::new(child.stdout.take().expect("stdout")),
        Log::Stderr => Box::new(child.stderr.take().expect("stderr")),
    };
    let mut lines = BufReader::new(output).lines();
    let up = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.to_lowercase().contains(&ready.to_lowercase()));
    assert!(up, "{program} exited before it was ready");
    std::thread::spawn(move || lines.for_each(drop));
    child
}

/// Kills a running server, as a crash would.
pub(crate) fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}
