//! Errors that know whose fault they are.
//!
//! Every failure the socket API can report is an [`ApiError`]: its kind decides the HTTP status,
//! the RFC 6749-style `error` code, and whether retrying can help. Provider failures are a
//! [`ProviderError`], which maps onto an `ApiError` in exactly one place ([`ProviderError::to_api`]).

use std::fmt;
use std::time::Duration;

/// Who is at fault for a failure. Decides status codes and retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The caller asked for something malformed or not allowed; retrying the same request fails again.
    Caller,
    /// The provider answered with something unusable or could not be reached.
    Provider,
    /// The agent itself cannot do its job (for example the audit log is not writable).
    Agent,
}

/// The error kinds of the socket API (SPEC section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    PayloadTooLarge,
    HeadersTooLarge,
    NotFound,
    MethodNotAllowed,
    AccessDenied,
    InvalidTarget,
    InvalidScope,
    UnknownIdentity,
    SlowDown,
    UpstreamError,
    UpstreamUnavailable,
    AuditUnavailable,
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::HeadersTooLarge => 431,
            ErrorKind::NotFound | ErrorKind::UnknownIdentity => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::AccessDenied | ErrorKind::InvalidTarget | ErrorKind::InvalidScope => 403,
            ErrorKind::SlowDown => 429,
            ErrorKind::UpstreamError => 502,
            ErrorKind::UpstreamUnavailable | ErrorKind::AuditUnavailable => 503,
            ErrorKind::Internal => 500,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::PayloadTooLarge | ErrorKind::HeadersTooLarge => "invalid_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
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

    pub fn fault(self) -> Fault {
        match self {
            ErrorKind::UpstreamError | ErrorKind::UpstreamUnavailable => Fault::Provider,
            ErrorKind::AuditUnavailable | ErrorKind::Internal => Fault::Agent,
            _ => Fault::Caller,
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
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
    pub fn status(&self) -> u16 {
        self.kind.status()
    }
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }
    /// The JSON body of SPEC section 3: `{"error":CODE,"error_description":TEXT}`.
    pub fn to_json(&self) -> serde_json::Value {
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
    pub fn unreachable(message: impl Into<String>) -> Self {
        ProviderError {
            kind: ProviderErrorKind::Unreachable,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad_response(message: impl Into<String>) -> Self {
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
    pub fn provider_code(&self) -> Option<&str> {
        match &self.kind {
            ProviderErrorKind::Rejected { error } => Some(error),
            _ => None,
        }
    }

    /// Whether retrying the same exchange later can succeed. Errors that are the caller's or the
    /// configuration's fault (`invalid_target`, `invalid_scope`, `invalid_grant`, a bad client) are
    /// not retried in a loop.
    pub fn is_retryable(&self) -> bool {
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
    pub fn to_api(&self) -> ApiError {
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
