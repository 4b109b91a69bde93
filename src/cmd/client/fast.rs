//! `cortexid token`'s command line read by hand, before (and without) clap: kubectl's exec plugin
//! and scripts start `cortexid token` for every token, so building clap's tree of every
//! subcommand is part of each token's cost. [`token`] takes only what clap would read the same
//! way: every option known, each given once (`--scope` any number of times), every value UTF-8
//! (paths need not be) and not starting with `-` unless it is `-` or follows `=`, and no path,
//! duration or format empty. Anything else (`--help`, an unknown or repeated option, a value clap
//! would reject or read differently) is left to the full parser, so every message and exit code
//! for a command line it declines stays clap's.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::cmd::common::SocketArg;
use crate::cmd::token::{OutputFormat, TokenArgs, parse_duration};

/// The arguments of `cortexid token …` (`args` without the program name), when the fast path
/// can read them all; `None` leaves them to clap.
pub(crate) fn token_args(args: &[OsString]) -> Option<TokenArgs> {
    let (first, rest) = args.split_first()?;
    if first != "token" {
        return None;
    }
    let mut audience = None;
    let mut scope = Vec::new();
    let mut identity = None;
    let mut min_valid: Option<Duration> = None;
    let mut format = None;
    let mut subject_token_file = None;
    let mut actor_token_file = None;
    let mut socket = None;
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        let bytes = arg.as_bytes();
        let (name, value) = match bytes.iter().position(|&b| b == b'=') {
            Some(eq) => (&bytes[..eq], OsStr::from_bytes(&bytes[eq + 1..])),
            None => {
                let value = it.next()?;
                // clap reads `-x` as an option, but `-` as a value.
                if value.as_bytes().starts_with(b"-") && value != "-" {
                    return None;
                }
                (bytes, value.as_os_str())
            }
        };
        let text = || value.to_str().map(str::to_string);
        // clap refuses an empty path; an empty string it passes on (and `run` refuses an empty
        // audience or identity itself).
        let path = || (!value.is_empty()).then(|| PathBuf::from(value));
        match name {
            b"--audience" => set(&mut audience, text()?)?,
            b"--scope" => scope.push(text()?),
            b"--identity" => set(&mut identity, text()?)?,
            b"--min-valid" => set(&mut min_valid, parse_duration(value.to_str()?).ok()?)?,
            b"--format" => set(&mut format, output_format(value.to_str()?)?)?,
            b"--subject-token-file" => set(&mut subject_token_file, path()?)?,
            b"--actor-token-file" => set(&mut actor_token_file, path()?)?,
            b"--socket" => set(&mut socket, path()?)?,
            _ => return None,
        }
    }
    if socket.is_none() {
        // As clap reads `env = "CORTEXID_SOCKET"`; an empty value is left to clap.
        match std::env::var_os("CORTEXID_SOCKET") {
            Some(v) if v.is_empty() => return None,
            Some(v) => socket = Some(PathBuf::from(v)),
            None => {}
        }
    }
    Some(TokenArgs {
        audience: audience?,
        scope,
        identity,
        min_valid,
        format: format.unwrap_or_default(),
        subject_token_file,
        actor_token_file,
        socket: SocketArg { socket },
    })
}

/// Stores the value of an option given once; `None` when it was given before.
fn set<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

/// `--format`'s values, spelled exactly as clap's `ValueEnum` spells them.
fn output_format(value: &str) -> Option<OutputFormat> {
    Some(match value {
        "raw" => OutputFormat::Raw,
        "json" => OutputFormat::Json,
        "k8s" => OutputFormat::K8s,
        "google" => OutputFormat::Google,
        "header" => OutputFormat::Header,
        _ => return None,
    })
}

/// Runs `cortexid token …` when the fast path can read its command line (`args` without the
/// program name), returning its exit code; `None` when the full parser must read it.
pub fn token(args: &[OsString]) -> Option<i32> {
    token_args(args).map(crate::cmd::token::run)
}

#[cfg(test)]
mod tests {
    use super::*;

    use clap::{Parser, ValueEnum};

    #[derive(Parser, Debug)]
    struct Cmd {
        #[command(subcommand)]
        sub: Sub,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Sub {
        Token(TokenArgs),
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn clap_reads(args: &[&str]) -> Option<TokenArgs> {
        let argv = std::iter::once("cortexid").chain(args.iter().copied());
        Cmd::try_parse_from(argv).ok().map(|c| match c.sub {
            Sub::Token(t) => t,
        })
    }

    #[test]
    fn the_fast_path_reads_what_clap_reads() {
        let dir = "/tmp/s.sock";
        for args in [
            &["token", "--audience", "https://a.example"][..],
            &[
                "token",
                "--audience=https://a.example",
                "--scope",
                "a b",
                "--scope=c",
                "--identity",
                "pay",
            ],
            &[
                "token",
                "--audience",
                "a",
                "--min-valid",
                "5m",
                "--format",
                "k8s",
                "--socket",
                dir,
            ],
            &["token", "--format=json", "--audience", "a", "--min-valid=1500ms"],
            &[
                "token",
                "--audience",
                "a",
                "--subject-token-file",
                "/s.jwt",
                "--actor-token-file=/a.jwt",
            ],
            &["token", "--audience", "a=b", "--identity", "x=y"],
            &["token", "--audience", "-", "--scope", "", "--scope="],
            &["token", "--audience", "", "--identity="],
            &["token", "--audience=", "--identity", ""],
        ] {
            let fast = token_args(&os(args)).unwrap_or_else(|| panic!("declined {args:?}"));
            let clap = clap_reads(args).unwrap_or_else(|| panic!("clap rejects {args:?}"));
            assert_eq!(format!("{fast:?}"), format!("{clap:?}"), "{args:?}");
        }
        for f in OutputFormat::value_variants() {
            let name = f.to_possible_value().unwrap();
            let args = ["token", "--audience", "a", "--format", name.get_name()];
            assert_eq!(token_args(&os(&args)).unwrap().format, *f);
        }
    }

    #[test]
    fn anything_unusual_is_left_to_clap() {
        for args in [
            &[][..],
            &["identities"],
            &["token"],
            &["token", "--help"],
            &["token", "-h"],
            &["token", "--scope", "a"],
            &["token", "--audience"],
            &["token", "--audience", "a", "--audience", "b"],
            &["token", "--audience", "a", "--format", "yaml"],
            &["token", "--audience", "a", "--format", "JSON"],
            &["token", "--audience", "a", "--min-valid", "soon"],
            &["token", "--audience", "-a"],
            &["token", "--audience", "--"],
            &["token", "--audience", "a", "--socket", ""],
            &["token", "--audience", "a", "--socket="],
            &["token", "--audience", "a", "--actor-token-file", ""],
            &["token", "--audience", "a", "--min-valid", ""],
            &["token", "--audience", "a", "--format="],
            &["token", "--audience", "a", "--sock", "/s"],
            &["token", "--audience", "a", "extra"],
            &["token", "--audience", "a", "--"],
            &["--version"],
        ] {
            assert!(token_args(&os(args)).is_none(), "took {args:?}");
        }
        // A value that is not UTF-8 is clap's to refuse, unless it is a path.
        let bad = || std::os::unix::ffi::OsStringExt::from_vec(vec![0xff]);
        let with = |opt: &str| [OsString::from("token"), "--audience=a".into(), opt.into(), bad()];
        assert!(token_args(&with("--audience")).is_none());
        assert!(token_args(&with("--scope")).is_none());
        let t = token_args(&with("--socket")).unwrap();
        assert_eq!(t.socket.path().as_os_str().as_bytes(), b"\xff");
        let mut eq = b"--socket=".to_vec();
        eq.push(0xff);
        let argv = [
            OsString::from("token"),
            "--audience=a".into(),
            OsStr::from_bytes(&eq).to_owned(),
        ];
        assert_eq!(token_args(&argv).unwrap().socket.path().as_os_str().as_bytes(), b"\xff");
    }
}
