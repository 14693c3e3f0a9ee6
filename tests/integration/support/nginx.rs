//! A real nginx (Debian's package) in front of test servers: a load balancer the way an
//! operator runs one (OPERATOR.md, "Running several servers").

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// nginx on a random port, round-robin over `upstreams` (`host:port` each).
pub struct Nginx {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Nginx {
    /// Starts it under `dir` with the load balancer settings OPERATOR.md names (bodies
    /// streamed both ways, no size limit, long reads for long-polls; a server that refuses
    /// connections is passed over).
    pub fn round_robin(dir: &Path, upstreams: &[&str]) -> Nginx {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let servers: String = upstreams
            .iter()
            .map(|u| format!("server {u} max_fails=1 fail_timeout=5s; "))
            .collect();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off; worker_processes 1; pid {pid}; error_log {err} warn;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp};\n\
                   upstream api {{ {servers} }}\n\
                   server {{ listen 127.0.0.1:{port};\n\
                     client_max_body_size 0; proxy_request_buffering off; proxy_buffering off;\n\
                     proxy_http_version 1.1; proxy_read_timeout 75s; proxy_connect_timeout 2s;\n\
                     proxy_next_upstream error timeout;\n\
                     location / {{ proxy_pass http://api; }} }} }}\n",
                pid = dir.join("nginx.pid").display(),
                err = dir.join("nginx.err").display(),
                tmp = dir.display(),
            ),
        )
        .unwrap();
        // Its output not inherited: its workers must never hold the test's output open.
        let child = Command::new(nginx_binary())
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx (scripts/test installs nginx-light)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

fn nginx_binary() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

impl Drop for Nginx {
    /// SIGTERM to the master, which stops its workers (SIGKILL would orphan them), then
    /// SIGKILL if it has not stopped within 5 s.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
