//! A private nginx on 127.0.0.1 answering every chat completion with a fixed reply (TESTING.md
//! §3): for the rate-limit tests (which read its access log) and the soak.
//!
//! nginx is `EK_NGINX`, else `nginx` on the `PATH`, else `/usr/sbin/nginx` (package
//! `nginx-light`; scripts/test.sh installs it). Without it a test says it is skipping and
//! passes, unless `EK_REQUIRE_SERVERS=1` (scripts/test.sh), which makes it a failure.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure here is a failed test
#![allow(dead_code)] // each test file uses part of this

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The nginx binary, or `None` (after saying so) to skip.
pub fn nginx_binary() -> Option<PathBuf> {
    let (path, missing) = match std::env::var_os("EK_NGINX") {
        Some(p) => {
            let p = PathBuf::from(p);
            let missing = format!("EK_NGINX={} is not a file", p.display());
            (p, missing)
        }
        None => {
            let on_path = std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("nginx"))
                    .find(|p| p.is_file())
            });
            let p = on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"));
            (p, "nginx is not installed".to_owned())
        }
    };
    let found = Some(path).filter(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("EK_REQUIRE_SERVERS").as_deref() != Ok("1"),
            "EK_REQUIRE_SERVERS=1 but {missing}: apt-get install nginx-light (or set EK_NGINX \
             to its path)"
        );
        eprintln!("skipping: {missing} (apt-get install nginx-light, or set EK_NGINX)");
    }
    found
}

/// A private nginx on 127.0.0.1 (one process: `master_process off`), in a fresh directory
/// under the system's temp dir. Dropping it kills nginx and removes the directory.
pub struct Nginx {
    bin: PathBuf,
    child: Child,
    /// nginx's directory (its configuration, logs and temp files).
    pub dir: PathBuf,
    port: u16,
}

impl Nginx {
    /// Starts nginx answering `POST /v1/chat/completions` with `reply`, logging each request's
    /// `$msec $request_time $status` to `dir/access.log` when `access_log` is set.
    pub fn start(bin: &Path, reply: &str, access_log: bool) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ek-rate-limit-nginx-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).unwrap();
        std::fs::create_dir(dir.join("tmp")).unwrap();
        // A port that was free a moment ago; another process may take it first, so a failed
        // bind is retried on a new one.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, config(&dir, port, reply, access_log)).unwrap();
            let mut child = Command::new(bin)
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(dir.join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            if wait_ready(&mut child, port) {
                return Nginx {
                    bin: bin.to_owned(),
                    child,
                    dir,
                    port,
                };
            }
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            assert!(
                log.contains("Address already in use"),
                "nginx did not start: {log}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("no free port for nginx after 5 tries");
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Stops nginx gracefully (`nginx -s quit`) and waits for it: it writes a request's log
    /// line after sending the reply, so only then is the log complete.
    pub fn stop(&mut self) {
        let status = Command::new(&self.bin)
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .arg("-e")
            .arg(self.dir.join("error.log"))
            .args(["-s", "quit"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "nginx -s quit: {status}");
        self.child.wait().unwrap();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until nginx accepts connections on `port` (`true`) or has exited (`false`); kills it
/// and fails if it does neither within ten seconds.
fn wait_ready(child: &mut Child, port: u16) -> bool {
    for _ in 0..500 {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("nginx did not listen on 127.0.0.1:{port}");
}

/// nginx's configuration: one process in the foreground, everything under `dir`.
fn config(dir: &Path, port: u16, reply: &str, access_log: bool) -> String {
    let d = dir.display();
    let log = if access_log {
        format!("access_log {d}/access.log ek_times;")
    } else {
        "access_log off;".to_owned()
    };
    format!(
        r"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    keepalive_timeout 60s;
    keepalive_requests 100000000;
    log_format ek_times '$msec $request_time $status';
    {log}
    server {{
        listen 127.0.0.1:{port};
        location = /v1/chat/completions {{
            default_type application/json;
            return 200 '{reply}';
        }}
        location / {{ return 404; }}
    }}
}}
"
    )
}
