//! Types that keep credentials out of logs and `Debug` output.
//!
//! `Secret` hides its whole value; `SecretUrl` shows a connection URL with its password
//! replaced by `***`, so operators can still see which host a program talks to.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What replaces a hidden value in every rendering.
pub const REDACTED: &str = "***";

/// A credential (password, token). Only [`Secret::expose`] gives the value back.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The real value, for handing to a client library. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A connection URL that may carry a password (`redis://:pw@host`, `postgres://u:pw@host/db`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The real URL, for handing to a client library. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Replaces the password of `scheme://user:password@host...` with `***`, and also any
/// `password=` query parameter (libpq accepts one). Text that is not a URL is returned as is.
pub fn redact_url(url: &str) -> String {
    let mut out = match url.split_once("://") {
        Some((scheme, rest)) => {
            // The authority ends at the first '/', '?' or '#'; the userinfo at its last '@'.
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(authority_end);
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = match userinfo.split_once(':') {
                        Some((user, _password)) => format!("{user}:{REDACTED}"),
                        None => userinfo.to_string(),
                    };
                    format!("{scheme}://{user}@{host}{tail}")
                }
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    };
    if let Some(query_start) = out.find('?') {
        let (base, query) = out.split_at(query_start + 1);
        let query = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                    format!("{key}={REDACTED}")
                }
                _ => pair.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&");
        out = format!("{base}{query}");
    }
    out
}

/// Whether a configuration key names a credential whose value must never be shown
/// (`sasl.password`, `ssl.key.password`, `sasl.oauthbearer.client.secret`, ...).
pub fn is_sensitive_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "credential",
        "pem",
        "private",
    ]
    .iter()
    .any(|word| key.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_hides_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://seckill:pw@127.0.0.1:5432/seckill"),
            "postgres://seckill:***@127.0.0.1:5432/seckill"
        );
        assert_eq!(
            redact_url("redis://:pw@localhost:6379/0"),
            "redis://:***@localhost:6379/0"
        );
        assert_eq!(
            redact_url("rediss://user:p%40ss@cache:6380"),
            "rediss://user:***@cache:6380"
        );
        assert_eq!(
            redact_url("postgres://u@h/db?sslmode=require&password=pw"),
            "postgres://u@h/db?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        let url = SecretUrl::new("postgres://a:topsecret@h/db");
        assert!(!format!("{url:?}").contains("topsecret"));
        assert!(!format!("{url}").contains("topsecret"));
    }

    #[test]
    fn sensitive_keys() {
        assert!(is_sensitive_key("sasl.password"));
        assert!(is_sensitive_key("sasl.oauthbearer.client.secret"));
        assert!(is_sensitive_key("ssl.key.pem"));
        assert!(!is_sensitive_key("linger.ms"));
    }
}
