//! The built `drl` binary as a child process: `drl serve` on free loopback ports (port 0, the
//! address read from its log), its log lines as they come, signals, and `drl check` against it.
//! Killed and reaped when dropped, on success or panic.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a process may take to start, log or stop; reached only when something is broken.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(20);

/// A `drl serve` child.
#[derive(Debug)]
pub struct DrlProcess {
    binary: String,
    child: Option<Child>,
    /// The HTTP API's URL, as the node logged it.
    pub url: String,
    /// Its log lines (stderr), as they come.
    logs: mpsc::Receiver<String>,
}

impl DrlProcess {
    /// Starts `binary serve --config config` on port 0 and reads the address it logs.
    pub fn start(binary: &str, config: &Path) -> Self {
        Self::start_with(binary, config, &[], &[])
    }

    /// [`DrlProcess::start`] with more arguments and environment variables (the admin token is
    /// not inherited from the test's environment).
    pub fn start_with(binary: &str, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn(binary, Some(config), args, env)
    }

    /// `binary serve` without a config file: the built-in rules.
    pub fn start_without_config(binary: &str) -> Self {
        Self::spawn(binary, None, &[], &[])
    }

    fn spawn(binary: &str, config: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(binary);
        command.args([
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ]);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("DRL_ADMIN_TOKEN")
            .env_remove("DRL_ADMIN_ADDR")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read stderr on a thread (and keep draining it, so the node never blocks on a full
        // pipe); wait for the "listening" line with a deadline.
        let stderr = child.stderr.take().unwrap();
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let deadline = Instant::now() + PROCESS_DEADLINE;
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = received
                .recv_timeout(left)
                .expect("drl serve logs its address");
            // The address ends the text line, or the JSON string it is in.
            if let Some((_, rest)) = line.split_once("listening on ") {
                break rest
                    .split(|c: char| c == '"' || c.is_whitespace())
                    .next()
                    .unwrap()
                    .to_owned();
            }
        };
        Self {
            binary: binary.to_owned(),
            child: Some(child),
            url,
            logs: received,
        }
    }

    /// Waits (bounded) for a log line containing `text`, and returns it.
    pub fn wait_for_log(&self, text: &str) -> String {
        let deadline = Instant::now() + PROCESS_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(_) => panic!("drl serve never logged {text:?}"),
            }
        }
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends `signal` (`-HUP`, `-TERM`, ...) to the node.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let sent = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(sent.success());
    }

    /// A counter of the node's `GET /metrics`: `drl_store_events_total{event="NAME"}` (0 while
    /// the store has not counted it yet).
    pub fn store_event(&self, name: &str) -> u64 {
        let addr = self.url.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PROCESS_DEADLINE)).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        let prefix = format!("drl_store_events_total{{event=\"{name}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    /// `drl check` against the node: its exit code (0 allowed, 1 denied, 2 error) and stdout.
    pub fn check(&self, user_id: &str, endpoint: &str) -> (Option<i32>, String) {
        let out = Command::new(&self.binary)
            .args(["check", "--server", &self.url, user_id, endpoint])
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    }

    /// `kill -9`, reaped.
    pub fn kill(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for the node to exit.
    pub fn terminate(self) -> ExitStatus {
        self.stop_with("-TERM")
    }

    /// Sends `signal` (`-TERM`, `-INT`), then waits (bounded) for the node to exit.
    pub fn stop_with(mut self, signal: &str) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = child.id().to_string();
        let sent = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(sent.success());
        let (done, exited) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(child.wait());
        });
        match exited.recv_timeout(PROCESS_DEADLINE) {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                panic!("drl serve did not stop on {signal}");
            }
        }
    }
}

impl Drop for DrlProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
