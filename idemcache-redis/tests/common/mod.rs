//! Real Redis servers for the tests: each on a free loopback port (never
//! 6379), in a temporary directory, without persistence unless a test asks,
//! killed by PID when its guard drops.
//!
//! A missing `redis-server` skips the test with a message, unless
//! `IDEMCACHE_REQUIRE_REDIS=1` (CI sets it): then it fails.

#![allow(dead_code)] // each test file uses part of it

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Whether `redis-server` can be run. Without it: panics if
/// `IDEMCACHE_REQUIRE_REDIS=1`, otherwise prints why the test is skipped.
pub fn redis_available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        if std::env::var("IDEMCACHE_REQUIRE_REDIS").as_deref() == Ok("1") {
            panic!(
                "redis-server is not installed and IDEMCACHE_REQUIRE_REDIS=1: install it (apt-get install -y redis-server)"
            );
        }
        eprintln!(
            "SKIPPED: redis-server is not installed (apt-get install -y redis-server); set IDEMCACHE_REQUIRE_REDIS=1 to fail instead"
        );
    }
    found
}

/// A port on 127.0.0.1 that nothing listens on right now (and, if
/// `with_bus`, whose Cluster bus port, +10000, is free too).
pub fn free_port(with_bus: bool) -> u16 {
    for _ in 0..200 {
        let port = if with_bus {
            // The bus port must exist: stay below 55536.
            let probe = TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
            let p = probe.local_addr().expect("probe address").port();
            20000 + p % 30000
        } else {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            listener.local_addr().expect("a local address").port()
        };
        if port == 6379 {
            continue;
        }
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && (!with_bus || free(port + 10000)) {
            return port;
        }
    }
    panic!("no free loopback port found");
}

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// A fresh temporary directory, removed by the server that owns it.
pub fn temp_dir(name: &str) -> PathBuf {
    let n = DIRS.fetch_add(1, Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("idemcache-redis-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

/// A running `redis-server`, killed (SIGKILL) when dropped.
pub struct RedisServer {
    pub port: u16,
    pub dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    watchdog: Option<Child>,
    owns_dir: bool,
}

impl RedisServer {
    /// A server without persistence, plus `extra` arguments.
    pub fn start(extra: &[&str]) -> RedisServer {
        let dir = temp_dir("server");
        Self::start_at(free_port(false), dir, extra, true)
    }

    /// A server on `port` in `dir` (`--save '' --appendonly no` unless
    /// `extra` says otherwise: later arguments win).
    pub fn start_at(port: u16, dir: PathBuf, extra: &[&str], owns_dir: bool) -> RedisServer {
        let mut args: Vec<String> = vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--logfile".into(),
            dir.join("redis.log").display().to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut server = RedisServer {
            port,
            dir,
            args,
            child: None,
            watchdog: None,
            owns_dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        // If this test process dies without dropping the guard (an abort,
        // a static shared by all tests), the watchdog kills the server.
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {test} 2>/dev/null && kill -0 {redis} 2>/dev/null; do sleep 1; done; \
                 kill -9 {redis} 2>/dev/null; \
                 if [ -n '{dir}' ] && ! kill -0 {test} 2>/dev/null; then rm -rf '{dir}'; fi",
                test = std::process::id(),
                redis = child.id(),
                dir = if self.owns_dir { self.dir.display().to_string() } else { String::new() },
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        self.child = Some(child);
        self.watchdog = watchdog;
        self.wait_ready();
    }

    /// Blocks until the server answers PING (bounded).
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log =
                        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                    panic!(
                        "redis-server on port {} exited ({status}):\n{log}",
                        self.port
                    );
                }
            }
            if ping(self.port) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a running server").id()
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Kills the server (SIGKILL: no shutdown save) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }

    /// Starts the server again, same port, directory and arguments.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs `redis-cli -p PORT args...`; its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// A field of `INFO section`.
    pub fn info(&self, section: &str, field: &str) -> Option<String> {
        info_field(&self.cli(&["INFO", section]), field)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `redis-cli -p port args...`, trimmed output.
pub fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

/// Whether a server on `port` answers PING with PONG (not LOADING).
pub fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(n) => buf[..n].starts_with(b"+PONG"),
        Err(_) => false,
    }
}

/// A Redis Cluster of three primaries (no replicas).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        for n in 0..3 {
            let node_dir = temp_dir(&format!("cluster-node-{n}"));
            let conf = node_dir
                .join(format!("nodes-{n}.conf"))
                .display()
                .to_string();
            let port = free_port(true);
            nodes.push(RedisServer::start_at(
                port,
                node_dir,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "5000",
                ],
                true,
            ));
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let output = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info = node.cli(&["CLUSTER", "INFO"]);
                if info_field(&info, "cluster_state").as_deref() == Some("ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not reach cluster_state:ok: {info}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// A unique key prefix per store, so stores on one server never share keys.
pub fn unique_prefix(name: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
