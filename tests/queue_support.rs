//! Test support for the queue: a real `redis-server` child process on a free loopback port.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer PING after it is started.
const STARTUP: Duration = Duration::from_secs(10);

/// A `redis-server` child process, killed when dropped. Never on port 6379.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A throwaway server without persistence.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server that writes every change to its AOF before answering (for kill -9 tests).
    pub fn start_persistent() -> Self {
        Self::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    }

    /// A server with extra command-line options (`--requirepass`, `--maxmemory-policy` …).
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir for redis-server");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut server = RedisServer { port: 0, dir, extra, child: None };
        // Another process may take the port between probing and binding: try a few.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
            server.kill9();
        }
        panic!("redis-server did not start on any of 5 ports:\n{}", server.log());
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (after [`Self::kill9`]).
    pub fn restart(&mut self) {
        self.kill9();
        assert!(self.spawn(), "redis-server did not restart on port {}:\n{}", self.port, self.log());
    }

    /// SIGSTOP: the server keeps its socket but answers nothing.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Sends one command and returns the raw reply (for checks that bypass the queue).
    pub fn raw(&self, args: &[&str]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis-server");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut cmd = format!("*{}\r\n", args.len());
        for a in args {
            cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(cmd.as_bytes()).expect("send");
        let mut buf = vec![0u8; 65536];
        let n = s.read(&mut buf).expect("reply");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn signal(&self, sig: i32) {
        let child = self.child.as_ref().expect("server running");
        let pid = i32::try_from(child.id()).expect("pid fits");
        // SAFETY: `kill` has no memory-safety preconditions; the pid is our own child's.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    fn spawn(&mut self) -> bool {
        let log = self.dir.path().join("redis.log");
        let mut cmd = Command::new(redis_server_binary());
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log);
        if !self.extra.iter().any(|a| a == "--appendonly") {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.args(&self.extra).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start redis-server (install it: scripts/setup does; queue tests need it): {e}")
        });
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < STARTUP {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            if self.answers_ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        // `-NOAUTH` also proves the server is up (password-protected servers).
        matches!(s.read(&mut buf), Ok(n) if n > 0 && (buf.starts_with(b"+PONG") || buf.starts_with(b"-NOAUTH")))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A loopback port nothing listens on right now (and never 6379).
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local addr").port();
        if port != 6379 {
            return port;
        }
    }
}

fn redis_server_binary() -> PathBuf {
    std::env::var_os("SERA_REDIS_SERVER").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("redis-server"))
}
