//! nginx as a second baseline: the web server people would otherwise put in front of a token
//! file. Started only when an `nginx` binary is on `PATH` (Debian: `apt-get install nginx-light`),
//! with a configuration the bench writes itself: one Unix socket, 2 worker processes, no access
//! log, `return 200` of a body of the same size and the same headers as cortexid's token answer,
//! pid and temporary files in the bench's own directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Proc, probe};

/// The `nginx` binary on `PATH`, if there is one.
pub fn binary() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("nginx"))
        .find(|p| p.is_file())
}

/// `body_len` bytes: `"xxx…x"`, like the hyper baseline's body (no byte nginx would interpret).
fn body(body_len: usize) -> String {
    let mut b = "x".repeat(body_len);
    if body_len >= 2 {
        b.replace_range(0..1, "\"");
        b.replace_range(body_len - 1..body_len, "\"");
    }
    b
}

/// The configuration: everything nginx writes goes under `dir`.
fn config(dir: &Path, socket: &Path, body_len: usize) -> String {
    let d = dir.display();
    // nginx started by root switches its workers to `user`; root keeps them able to use `dir`.
    let user = if nix::unistd::geteuid().is_root() {
        "user root;\n"
    } else {
        ""
    };
    format!(
        "daemon off;\nmaster_process on;\nworker_processes 2;\n{user}pid {d}/nginx.pid;\n\
         error_log {d}/error.log error;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         keepalive_requests 100000000;\n\
         server {{\n    listen unix:{socket};\n    default_type application/json;\n\
         location / {{\n      add_header Cache-Control no-store;\n      return 200 '{body}';\n    }}\n  }}\n}}\n",
        socket = socket.display(),
        body = body(body_len),
    )
}

/// Starts nginx on `socket` in `dir` and returns once it answers.
pub fn spawn(nginx: &Path, dir: &Path, socket: &Path, body_len: usize) -> Proc {
    std::fs::create_dir_all(dir).expect("nginx dir");
    let _ = std::fs::remove_file(socket);
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config(dir, socket, body_len)).expect("write nginx.conf");
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn nginx");
    let p = Proc {
        child,
        socket: socket.to_path_buf(),
    };
    let until = Instant::now() + Duration::from_secs(10);
    while probe(socket, "/") != Some(200) {
        assert!(
            Instant::now() < until,
            "nginx did not answer on {}; see {}",
            socket.display(),
            dir.join("error.log").display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    p
}
