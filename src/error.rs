//! Errors that know whose fault they are.
//!
//! Every failure the socket API can report is an [`ApiError`]: its kind decides the HTTP status,
//! the RFC 6749-style `error` code, and whether retrying can help. Provider failures are a
//! [`ProviderError`], which maps onto an `ApiError` in exactly one place ([`ProviderError::to_api`]).

use std::fmt;
use std::time::Duration;

/// The error kinds of the socket API (the error table of `docs/api.md`). Each decides the HTTP
/// status and the `error` code in exactly one place: [`ErrorKind::status`], [`ErrorKind::code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400 `invalid_request`: malformed query or body, missing audience, unknown parameter.
    InvalidRequest,
    /// 408 `invalid_request`: the request body did not arrive in time.
    RequestTimeout,
    /// 413 `invalid_request`: a body over 64 KiB.
    PayloadTooLarge,
    /// 431 `invalid_request`: a request head over 16 KiB.
    HeadersTooLarge,
    /// 404 `not_found`: no such endpoint.
    NotFound,
    /// 405 `method_not_allowed`: the endpoint exists, not with this method.
    MethodNotAllowed,
    /// 401 `login_required`: the role or identity needs the caller's session at a `[[login]]`,
    /// and the caller has none (or it ended); the text names the login, why, and the command.
    LoginRequired,
    /// 403 `access_denied`: no role lets this caller use this identity.
    AccessDenied,
    /// 403 `invalid_target`: audience not allowed for this caller, or refused by the provider.
    InvalidTarget,
    /// 403 `invalid_scope`: scope not allowed for this caller, or refused by the provider.
    InvalidScope,
    /// 404 `unknown_identity`: no identity of that name is configured.
    UnknownIdentity,
    /// 429 `slow_down`: the calling process is over its role's rate.
    SlowDown,
    /// 502 `upstream_error`: the provider answered with something unusable, or the issued token
    /// failed verification.
    UpstreamError,
    /// 503 `upstream_unavailable`: the provider cannot be reached and no valid token is cached.
    UpstreamUnavailable,
    /// 503 `audit_unavailable`: the audit log cannot be written and `audit_failure = "closed"`.
    AuditUnavailable,
    /// 500 `server_error`: the agent itself failed (for example it cannot read its own
    /// credential file).
    Internal,
}

impl ErrorKind {
    /// The HTTP status of this kind.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::HeadersTooLarge => 431,
            ErrorKind::NotFound | ErrorKind::UnknownIdentity => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::LoginRequired => 401,
            ErrorKind::AccessDenied | ErrorKind::InvalidTarget | ErrorKind::InvalidScope => 403,
            ErrorKind::SlowDown => 429,
            ErrorKind::UpstreamError => 502,
            ErrorKind::UpstreamUnavailable | ErrorKind::AuditUnavailable => 503,
            ErrorKind::Internal => 500,
        }
    }

    /// The RFC 6749-style `error` code of this kind.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::RequestTimeout
            | ErrorKind::PayloadTooLarge
            | ErrorKind::HeadersTooLarge => "invalid_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::LoginRequired => "login_required",
            ErrorKind::AccessDenied => "access_denied",
            ErrorKind::InvalidTarget => "invalid_target",
            ErrorKind::InvalidScope => "invalid_scope",
            ErrorKind::UnknownIdentity => "unknown_identity",
            ErrorKind::SlowDown => "slow_down",
            ErrorKind::UpstreamError => "upstream_error",
            ErrorKind::UpstreamUnavailable => "upstream_unavailable",
            ErrorKind::AuditUnavailable => "audit_unavailable",
            ErrorKind::Internal => "server_error",
        }
    }
}

/// An error as the caller sees it: kind plus a description that says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {description}", kind.code())]
pub struct ApiError {
    pub kind: ErrorKind,
    pub description: String,
    /// Seconds the caller should wait before retrying (429, 503).
    pub retry_after: Option<u64>,
    /// The provider's RFC 6749 error code, when the provider refused.
    pub provider_error: Option<String>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, description: impl Into<String>) -> Self {
        ApiError {
            kind,
            description: description.into(),
            retry_after: None,
            provider_error: None,
        }
    }
    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, d)
    }
    pub fn access_denied(d: impl Into<String>) -> Self {
        Self::new(ErrorKind::AccessDenied, d)
    }
    pub fn invalid_target(d: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidTarget, d)
    }
    pub fn invalid_scope(d: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidScope, d)
    }
    pub(crate) fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
    pub fn status(&self) -> u16 {
        self.kind.status()
    }
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }
    /// The JSON error body of the socket API: `{"error":CODE,"error_description":TEXT}`.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"error": self.code(), "error_description": self.description})
    }
}

/// What went wrong talking to a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderErrorKind {
    /// Could not connect, timed out, TLS failure, or a 5xx / 429: retrying later can help.
    Unreachable,
    /// The provider answered with an RFC 6749 section 5.2 error.
    Rejected { error: String },
    /// The provider answered with something that is not a usable token response.
    BadResponse,
    /// The issued token failed verification (signature, issuer, audience, expiry).
    Verification,
    /// Our own side: a secret or credential file could not be read, a key could not sign.
    Local,
}

/// A failure talking to a provider, with a description that names the provider and the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub kind: ProviderErrorKind,
    pub message: String,
    /// A `Retry-After` the provider sent with a 429 or 503.
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    pub(crate) fn unreachable(message: impl Into<String>) -> Self {
        ProviderError {
            kind: ProviderErrorKind::Unreachable,
            message: message.into(),
            retry_after: None,
        }
    }
    pub(crate) fn bad_response(message: impl Into<String>) -> Self {
        ProviderError {
            kind: ProviderErrorKind::BadResponse,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn verification(message: impl Into<String>) -> Self {
        ProviderError {
            kind: ProviderErrorKind::Verification,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn local(message: impl Into<String>) -> Self {
        ProviderError {
            kind: ProviderErrorKind::Local,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn rejected(error: impl Into<String>, message: impl Into<String>) -> Self {
        ProviderError {
            kind: ProviderErrorKind::Rejected { error: error.into() },
            message: message.into(),
            retry_after: None,
        }
    }

    /// The RFC 6749 error code the provider sent, if it sent one.
    pub(crate) fn provider_code(&self) -> Option<&str> {
        match &self.kind {
            ProviderErrorKind::Rejected { error } => Some(error),
            _ => None,
        }
    }

    /// Whether retrying the same exchange later can succeed. Errors that are the caller's or the
    /// configuration's fault (`invalid_target`, `invalid_scope`, `invalid_grant`, a bad client) are
    /// not retried in a loop.
    pub(crate) fn is_retryable(&self) -> bool {
        match &self.kind {
            ProviderErrorKind::Unreachable => true,
            ProviderErrorKind::Rejected { error } => {
                matches!(error.as_str(), "temporarily_unavailable" | "server_error" | "slow_down")
            }
            // A bad response or a failed verification may be a transient provider fault (for
            // example a JWKS rotation in progress); retry with backoff.
            ProviderErrorKind::BadResponse | ProviderErrorKind::Verification => true,
            ProviderErrorKind::Local => false,
        }
    }

    /// How the caller sees this failure.
    pub(crate) fn to_api(&self) -> ApiError {
        let kind = match &self.kind {
            ProviderErrorKind::Unreachable => ErrorKind::UpstreamUnavailable,
            ProviderErrorKind::Rejected { error } => match error.as_str() {
                "invalid_target" => ErrorKind::InvalidTarget,
                "invalid_scope" => ErrorKind::InvalidScope,
                "temporarily_unavailable" | "slow_down" => ErrorKind::UpstreamUnavailable,
                _ => ErrorKind::UpstreamError,
            },
            ProviderErrorKind::BadResponse | ProviderErrorKind::Verification => ErrorKind::UpstreamError,
            ProviderErrorKind::Local => ErrorKind::Internal,
        };
        let mut e = ApiError::new(kind, self.message.clone());
        e.provider_error = self.provider_code().map(str::to_string);
        if let Some(ra) = self.retry_after {
            e.retry_after = Some(ra.as_secs().max(1));
        }
        e
    }
}

/// A problem in a configuration file, located by line and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// A configuration that could not be loaded: every problem found, with the file it is in.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub path: String,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(f, "{}: {n} problem{}", self.path, if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            match p.line {
                Some(line) => write!(f, "\n{}:{line}: {}: {}", self.path, p.key, p.message)?,
                None => write!(f, "\n{}: {}: {}", self.path, p.key, p.message)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_the_documented_status_and_code() {
        let table = [
            (ErrorKind::InvalidRequest, 400, "invalid_request"),
            (ErrorKind::RequestTimeout, 408, "invalid_request"),
            (ErrorKind::PayloadTooLarge, 413, "invalid_request"),
            (ErrorKind::HeadersTooLarge, 431, "invalid_request"),
            (ErrorKind::NotFound, 404, "not_found"),
            (ErrorKind::MethodNotAllowed, 405, "method_not_allowed"),
            (ErrorKind::AccessDenied, 403, "access_denied"),
            (ErrorKind::InvalidTarget, 403, "invalid_target"),
            (ErrorKind::InvalidScope, 403, "invalid_scope"),
            (ErrorKind::UnknownIdentity, 404, "unknown_identity"),
            (ErrorKind::SlowDown, 429, "slow_down"),
            (ErrorKind::UpstreamError, 502, "upstream_error"),
            (ErrorKind::UpstreamUnavailable, 503, "upstream_unavailable"),
            (ErrorKind::AuditUnavailable, 503, "audit_unavailable"),
            (ErrorKind::Internal, 500, "server_error"),
        ];
        for (kind, status, code) in table {
            assert_eq!((kind.status(), kind.code()), (status, code), "{kind:?}");
        }
        let e = ApiError::access_denied("uid 1000 has no role");
        assert_eq!(
            e.to_json(),
            serde_json::json!({"error": "access_denied", "error_description": "uid 1000 has no role"})
        );
    }

    #[test]
    fn provider_failures_map_to_what_callers_can_act_on() {
        let cases = [
            (ProviderError::unreachable("down"), ErrorKind::UpstreamUnavailable, true),
            (
                ProviderError::rejected("invalid_target", "x"),
                ErrorKind::InvalidTarget,
                false,
            ),
            (
                ProviderError::rejected("invalid_scope", "x"),
                ErrorKind::InvalidScope,
                false,
            ),
            (
                ProviderError::rejected("invalid_grant", "x"),
                ErrorKind::UpstreamError,
                false,
            ),
            (
                ProviderError::rejected("invalid_client", "x"),
                ErrorKind::UpstreamError,
                false,
            ),
            (
                ProviderError::rejected("temporarily_unavailable", "x"),
                ErrorKind::UpstreamUnavailable,
                true,
            ),
            (
                ProviderError::rejected("slow_down", "x"),
                ErrorKind::UpstreamUnavailable,
                true,
            ),
            (ProviderError::bad_response("x"), ErrorKind::UpstreamError, true),
            (ProviderError::verification("x"), ErrorKind::UpstreamError, true),
            (ProviderError::local("x"), ErrorKind::Internal, false),
        ];
        for (e, kind, retry) in cases {
            assert_eq!(e.to_api().kind, kind, "{e:?}");
            assert_eq!(e.is_retryable(), retry, "{e:?}");
        }
        let mut e = ProviderError::rejected("invalid_target", "refused");
        e.retry_after = Some(Duration::from_millis(200));
        let api = e.to_api();
        assert_eq!(api.provider_error.as_deref(), Some("invalid_target"));
        assert_eq!(
            api.retry_after,
            Some(1),
            "a Retry-After under a second is passed on as 1"
        );
    }
}
