//! Opening the sign-in page in the person's browser without putting the authorization URL (its
//! `state`, `nonce`, PKCE challenge and redirect) on a command line, where every uid on the host
//! reads it in `/proc/PID/cmdline`: the browser is given a private file (in a 0700 directory,
//! itself 0600) that redirects to the URL.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::escape;

/// The private page the browser was given; removed (with its directory) when dropped.
pub(super) struct RedirectPage {
    dir: PathBuf,
}

impl Drop for RedirectPage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether this session has a display a browser could open on.
pub(super) fn has_display() -> bool {
    std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
}

/// Opens `url` in the person's browser (`$BROWSER`, else `xdg-open` when there is a display)
/// through a private redirect page. Returns the page, to keep until the browser has come back,
/// or `None` when no browser was started.
pub(super) fn open_browser(url: &str) -> Option<RedirectPage> {
    let browser = std::env::var("BROWSER").ok().filter(|b| !b.trim().is_empty());
    if !has_display() && browser.is_none() {
        return None;
    }
    let (page, file) = write_page(url).ok()?;
    let program = browser.unwrap_or_else(|| "xdg-open".to_string());
    std::process::Command::new(program)
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()
        .map(|_| page)
}

/// A directory only this uid may enter: `$XDG_RUNTIME_DIR` when it is this uid's and private,
/// else the system's temporary directory; in it a new 0700 directory with a 0600 page.
fn write_page(url: &str) -> std::io::Result<(RedirectPage, PathBuf)> {
    let me = nix::unistd::geteuid().as_raw();
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| private_to(d, me))
        .unwrap_or_else(std::env::temp_dir);
    let name = crate::upstream::random_urlsafe(12).map_err(|e| std::io::Error::other(e.to_string()))?;
    let dir = base.join(format!("cortexid-login-{name}"));
    // A new directory (never an existing one, nor a link): no other uid can have put it there.
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let page = RedirectPage { dir: dir.clone() };
    let file = dir.join("sign-in.html");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)?;
    let href = escape(url);
    write!(
        f,
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\">\
         <meta http-equiv=\"refresh\" content=\"0;url={href}\"><title>cortexid: sign in</title></head>\
         <body style=\"font-family:sans-serif;margin:3em\"><p><a href=\"{href}\">Continue to sign in</a></p></body></html>"
    )?;
    Ok((page, file))
}

/// Whether `dir` is a directory (not a link) of `uid` that no one else may enter.
fn private_to(dir: &Path, uid: u32) -> bool {
    std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir() && m.uid() == uid && m.permissions().mode() & 0o077 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_private_and_redirects_to_the_url() {
        let (page, file) = write_page("https://idp.test/authorize?state=s&nonce=n").unwrap();
        let dir = file.parent().unwrap().to_path_buf();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains("url=https://idp.test/authorize?state=s&amp;nonce=n"),
            "{text}"
        );
        drop(page);
        assert!(!dir.exists());
    }
}
