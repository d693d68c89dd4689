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

/// For command-line flags (`--redis-url`): the value is kept hidden from `Debug` from the
/// moment it is parsed.
impl std::str::FromStr for SecretUrl {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(value))
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
/// `password=` query parameter (libpq accepts one).
///
/// Fails closed: a password may hold `/`, `?`, `#`, `@` or a space unencoded (as people paste
/// them), so the userinfo is taken to end at the *last* `@`. When the text before that `@`
/// also holds a `/`, `?` or `#`, where the password ends cannot be known, and everything
/// between the scheme and the last `@` is hidden. Text without a scheme loses everything
/// before its last `@` the same way.
pub fn redact_url(url: &str) -> String {
    // Parameters first: an `@` inside a `password=` value must not be taken for the end
    // of the userinfo.
    let url = redact_password_parameters(url);
    let url = url.as_str();
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let prefix = scheme.map_or(String::new(), |scheme| format!("{scheme}://"));
    match rest.rsplit_once('@') {
        None => url.to_string(),
        Some((userinfo, host_and_tail)) => {
            let certain = scheme.is_some() && !userinfo.contains(['/', '?', '#']);
            let shown_userinfo = match userinfo.split_once(':') {
                Some((user, _password)) if certain => format!("{user}:{REDACTED}"),
                // No ':' means no password, only a user name.
                None if certain => userinfo.to_string(),
                _ => REDACTED.to_string(),
            };
            format!("{prefix}{shown_userinfo}@{host_and_tail}")
        }
    }
}

/// Hides the value of a `password=` parameter, in a query string (`?a=1&password=x`) or a
/// libpq key/value string (`host=h password=x`). Fails closed: the value may hold `&` or a
/// space, so everything after `password=` is hidden.
fn redact_password_parameters(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut search_from = 0;
    while let Some(found) = lower[search_from..].find("password=") {
        let key_start = search_from + found;
        search_from = key_start + "password=".len();
        // Only a whole key (`?password=`, `&password=`, ` password=`), not `xpassword=`.
        let whole_key =
            key_start == 0 || matches!(text.as_bytes()[key_start - 1], b'?' | b'&' | b' ' | b';');
        if whole_key {
            return format!("{}{REDACTED}", &text[..search_from]);
        }
    }
    text.to_string()
}

/// Advice for a connection URL its client library could not parse: when it carries a
/// userinfo (`@`), the usual cause is a password pasted with reserved characters unencoded.
pub fn url_parse_hint(url: &str) -> &'static str {
    if url.contains('@') {
        "; if the password holds / ? # @ % : or a space, percent-encode them \
         (%2F %3F %23 %40 %25 %3A %20)"
    } else {
        ""
    }
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
            redact_url("host=h password=p w&x dbname=d"),
            "host=h password=***"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        let url = SecretUrl::new("postgres://a:topsecret@h/db");
        assert!(!format!("{url:?}").contains("topsecret"));
        assert!(!format!("{url}").contains("topsecret"));
    }

    /// Passwords pasted unencoded: whatever they hold, no part of them is shown, and the
    /// host stays visible whenever it can be told apart. Every password part is a `Q`.
    #[test]
    fn unencoded_passwords_fail_closed() {
        let passwords = [
            "Q/Q",
            "Q?Q",
            "Q#Q",
            "Q@Q",
            "Q:Q",
            "Q%Q",
            "Q Q",
            "Q/Q?Q#Q@Q:Q%Q Q",
            "Q@",
            "/Q",
            ":Q",
            "Q%2FQ",
            "Q@Q/Q",
            "Q&x=1",
        ];
        for password in passwords {
            for (url, tail) in [
                (
                    format!("redis://:{password}@127.0.0.1:1/0"),
                    "@127.0.0.1:1/0",
                ),
                (
                    format!("rediss://user:{password}@cache:6380"),
                    "@cache:6380",
                ),
                (
                    format!("postgres://u:{password}@db:5432/app?sslmode=require"),
                    "@db:5432/app?sslmode=require",
                ),
                (format!("u:{password}@db:5432"), "@db:5432"),
                (format!("postgres://u@db/app?password={password}"), REDACTED),
                (format!("host=db password={password}"), REDACTED),
            ] {
                let shown = redact_url(&url);
                assert!(!shown.contains('Q'), "{url} -> {shown}");
                assert!(shown.ends_with(tail), "{url} -> {shown}");
            }
        }
        // Splits that are certain keep the user name.
        assert_eq!(
            redact_url("postgres://u:pa@ss@db/x"),
            "postgres://u:***@db/x"
        );
        assert_eq!(redact_url("rediss://u:p w:x@db"), "rediss://u:***@db");
        assert_eq!(redact_url("redis://:pa/ss@h:1/0"), "redis://***@h:1/0");
    }

    #[test]
    fn sensitive_keys() {
        assert!(is_sensitive_key("sasl.password"));
        assert!(is_sensitive_key("sasl.oauthbearer.client.secret"));
        assert!(is_sensitive_key("ssl.key.pem"));
        assert!(!is_sensitive_key("linger.ms"));
    }
}
