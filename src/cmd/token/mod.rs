//! `cortexid token`: ask the running agent for a token and print it in the asked-for format
//! (`format.rs`). The only subcommand that ever prints a token, and only on stdout, because the
//! user asked for it. Credentials to present (`--subject-token-file`, `--actor-token-file`) are
//! read here and sent in a `POST` body, never in a URL.

mod format;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) use format::OutputFormat;
use format::{format_error, format_token};

use crate::cmd::client::{TokenRequest, blocking};
use crate::cmd::common::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE, SocketArg, describe_error, emit, error_line};
use crate::oauth::TOKEN_TYPE_JWT;

/// The largest credential file `token` reads.
const MAX_CREDENTIAL_BYTES: u64 = 64 * 1024;

#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// The audience the token is for.
    #[arg(long, value_name = "AUD")]
    pub(crate) audience: String,
    /// A scope to ask for; repeat it, or give several separated by spaces.
    #[arg(long, value_name = "SCOPE")]
    pub(crate) scope: Vec<String>,
    /// The identity to use (needed when this caller may use several).
    #[arg(long, value_name = "NAME")]
    pub(crate) identity: Option<String>,
    /// The least lifetime the token must have left, e.g. "5m" or "90s" (bare numbers are seconds).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) min_valid: Option<Duration>,
    /// How to print the token.
    #[arg(long, value_enum, default_value_t = OutputFormat::Raw)]
    pub(crate) format: OutputFormat,
    /// Present the credential in this file as the subject (identities with subject = "caller").
    #[arg(long, value_name = "PATH")]
    pub(crate) subject_token_file: Option<PathBuf>,
    /// Act as an agent: present the credential in this file as the actor.
    #[arg(long, value_name = "PATH")]
    pub(crate) actor_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) socket: SocketArg,
}

/// A duration as humantime writes it ("5m", "1h 30m"), or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, InvalidDuration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(InvalidDuration)
}

/// Why a `--min-valid` value is not a duration.
#[derive(Debug, thiserror::Error)]
#[error("{0} (examples: 30s, 5m, 1h)")]
pub(crate) struct InvalidDuration(humantime::DurationError);

/// Whole seconds, rounded up: asking for "1500ms" must not become a 1 s guarantee.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Why a credential file given to `token` cannot be presented. `flag` is the option that named it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CredentialFileError {
    /// The file cannot be opened or read (a file that is not UTF-8 text cannot be read).
    #[error("cannot read {flag} {}: {error}", .path.display())]
    Unreadable {
        flag: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file is larger than [`MAX_CREDENTIAL_BYTES`]: whatever it holds is not a token.
    #[error("{flag} {} is larger than {} KiB: not a token", .path.display(), MAX_CREDENTIAL_BYTES / 1024)]
    TooLarge { flag: &'static str, path: PathBuf },
    /// The file holds nothing but whitespace.
    #[error("{flag} {} is empty", .path.display())]
    Empty { flag: &'static str, path: PathBuf },
}

/// Reads a credential file: trimmed, not empty, not huge, UTF-8.
fn read_credential(flag: &'static str, path: &Path) -> Result<String, CredentialFileError> {
    use std::io::Read;
    let unreadable = |error| CredentialFileError::Unreadable {
        flag,
        path: path.to_path_buf(),
        error,
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut raw = String::new();
    file.take(MAX_CREDENTIAL_BYTES + 1)
        .read_to_string(&mut raw)
        .map_err(unreadable)?;
    if raw.len() as u64 > MAX_CREDENTIAL_BYTES {
        return Err(CredentialFileError::TooLarge {
            flag,
            path: path.to_path_buf(),
        });
    }
    let token = raw.trim();
    if token.is_empty() {
        return Err(CredentialFileError::Empty {
            flag,
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

/// Reports a failure on stderr (and in Google's shape on stdout) and returns `exit`.
fn fail(format: OutputFormat, code: &str, description: &str, stderr: &str, exit: i32) -> i32 {
    if let Some(out) = format_error(format, code, description) {
        emit(&out);
    }
    eprintln!("{stderr}");
    exit
}

impl TokenArgs {
    /// The request these arguments ask for, without the credentials (see [`TokenArgs::request`]).
    pub(crate) fn base_request(&self) -> TokenRequest {
        let mut scopes: Vec<String> = Vec::new();
        for s in self.scope.iter().flat_map(|s| s.split_whitespace()) {
            if !scopes.iter().any(|have| have == s) {
                scopes.push(s.to_string());
            }
        }
        TokenRequest {
            audience: Some(self.audience.clone()),
            scopes,
            identity: self.identity.clone(),
            min_valid: self.min_valid.map(ceil_secs),
            ..TokenRequest::default()
        }
    }

    /// The full request, with the credentials read from their files.
    pub(crate) fn request(&self) -> Result<TokenRequest, CredentialFileError> {
        let mut req = self.base_request();
        if let Some(path) = &self.subject_token_file {
            req.subject_token = Some(read_credential("--subject-token-file", path)?);
            req.subject_token_type = Some(TOKEN_TYPE_JWT.to_string());
        }
        if let Some(path) = &self.actor_token_file {
            req.actor_token = Some(read_credential("--actor-token-file", path)?);
            req.actor_token_type = Some(TOKEN_TYPE_JWT.to_string());
        }
        Ok(req)
    }
}

/// `cortexid token`: one request over a blocking socket, with no async runtime to start (it runs
/// once per token for kubectl's exec plugin and scripts, so its start-up is its cost).
pub fn run(args: TokenArgs) -> i32 {
    let format = args.format;
    if args.audience.trim().is_empty() {
        let msg = "--audience must not be empty";
        return fail(format, "invalid_request", msg, &format!("cortexid: {msg}"), EXIT_USAGE);
    }
    if matches!(&args.identity, Some(i) if i.trim().is_empty()) {
        let msg = "--identity must not be empty";
        return fail(format, "invalid_request", msg, &format!("cortexid: {msg}"), EXIT_USAGE);
    }
    let req = match args.request() {
        Ok(r) => r,
        Err(e) => {
            let msg = e.to_string();
            return fail(
                format,
                "invalid_request",
                &msg,
                &format!("cortexid: {msg}"),
                EXIT_FAILURE,
            );
        }
    };
    let resp = match blocking::token(&args.socket.path(), &req) {
        Ok(r) => r,
        Err(e) => {
            let msg = e.to_string();
            return fail(
                format,
                "agent_unavailable",
                &msg,
                &format!("cortexid: {msg}"),
                EXIT_FAILURE,
            );
        }
    };
    if !resp.is_success() {
        let (code, description) = describe_error(&resp);
        return fail(
            format,
            &code,
            &description,
            &error_line(&code, &description),
            EXIT_FAILURE,
        );
    }
    let body = match resp.json() {
        Ok(b) => b,
        Err(e) => {
            let msg = e.to_string();
            return fail(
                format,
                "invalid_response",
                &msg,
                &format!("cortexid: {msg}"),
                EXIT_FAILURE,
            );
        }
    };
    match format_token(format, &body) {
        Ok(out) => {
            if emit(&out) {
                EXIT_OK
            } else {
                EXIT_FAILURE
            }
        }
        Err(e) => {
            let msg = e.to_string();
            fail(
                format,
                "invalid_response",
                &msg,
                &format!("cortexid: {msg}"),
                EXIT_FAILURE,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use clap::Parser;

    use crate::cmd::identities::IdentitiesArgs;
    use crate::cmd::status::StatusArgs;

    #[derive(Parser, Debug)]
    struct Cmd {
        #[command(subcommand)]
        sub: Sub,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Sub {
        Token(TokenArgs),
        Identities(IdentitiesArgs),
        Status(StatusArgs),
    }

    fn parse_token(args: &[&str]) -> Result<TokenArgs, clap::Error> {
        let mut argv = vec!["cortexid", "token"];
        argv.extend_from_slice(args);
        match Cmd::try_parse_from(argv)?.sub {
            Sub::Token(t) => Ok(t),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn token_arguments_parse() {
        let t = parse_token(&[
            "--audience",
            "https://payments.internal",
            "--scope",
            "a b",
            "--scope",
            "c",
            "--scope",
            "a",
            "--min-valid",
            "5m",
            "--identity",
            "payments",
            "--format",
            "k8s",
            "--socket",
            "/tmp/s.sock",
        ])
        .unwrap();
        assert_eq!(t.format, OutputFormat::K8s);
        assert_eq!(t.socket.path(), PathBuf::from("/tmp/s.sock"));
        let req = t.request().unwrap();
        assert_eq!(req.scopes, ["a", "b", "c"]);
        assert_eq!(req.min_valid, Some(300));
        assert_eq!(
            req.query(),
            "audience=https%3A%2F%2Fpayments.internal&scope=a%20b%20c&identity=payments&min_valid=300"
        );
        assert!(!req.presents_credential());

        let t = parse_token(&["--audience", "a", "--min-valid", "90"]).unwrap();
        assert_eq!(t.format, OutputFormat::Raw);
        assert_eq!(t.base_request().min_valid, Some(90));
        let t = parse_token(&["--audience", "a", "--min-valid", "1500ms"]).unwrap();
        assert_eq!(t.base_request().min_valid, Some(2));

        for f in ["raw", "json", "k8s", "google", "header"] {
            parse_token(&["--audience", "a", "--format", f]).unwrap();
        }
        let e = parse_token(&["--scope", "x"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert!(parse_token(&["--audience", "a", "--min-valid", "soon"]).is_err());
        assert!(parse_token(&["--audience", "a", "--format", "yaml"]).is_err());
        assert!(
            Cmd::try_parse_from(["cortexid", "status", "--json"]).is_ok()
                && Cmd::try_parse_from(["cortexid", "identities"]).is_ok()
        );
    }

    #[test]
    fn credential_files_are_read_trimmed_and_go_in_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let actor = dir.path().join("actor.jwt");
        std::fs::write(&actor, "  eyJ.actor.sig\n\n").unwrap();
        let subject = dir.path().join("subject.jwt");
        std::fs::write(&subject, "eyJ.subject.sig").unwrap();
        let t = parse_token(&[
            "--audience",
            "a",
            "--actor-token-file",
            actor.to_str().unwrap(),
            "--subject-token-file",
            subject.to_str().unwrap(),
        ])
        .unwrap();
        let req = t.request().unwrap();
        assert!(req.presents_credential());
        let body = req.body();
        assert_eq!(body["actor_token"], "eyJ.actor.sig");
        assert_eq!(body["actor_token_type"], TOKEN_TYPE_JWT);
        assert_eq!(body["subject_token"], "eyJ.subject.sig");
        assert_eq!(body["subject_token_type"], TOKEN_TYPE_JWT);

        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let e = read_credential("--actor-token-file", &empty).unwrap_err().to_string();
        assert!(e.ends_with("is empty"), "{e}");
        let e = read_credential("--actor-token-file", &dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read --actor-token-file"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; 70_000]).unwrap();
        assert!(
            read_credential("--actor-token-file", &big)
                .unwrap_err()
                .to_string()
                .contains("larger")
        );
    }
}
