//! Who the buyer is: a bearer token, a JWT signed HS256 with a secret read from
//! `GATEWAY_JWT_SECRET` or from the file `gateway.jwt_secret_file` (never from
//! config.yaml, never logged). Its subject is the user id; it must carry an expiry.
//! `seckill_admin token --user N` issues one ([`issue`]).

use crate::config::GatewayConfig;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The environment variable that holds the secret when no file is configured.
pub const SECRET_ENV: &str = "GATEWAY_JWT_SECRET";
/// Shorter secrets are refused: HS256 with a guessable key is no authentication.
const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    #[error("no token secret: set {SECRET_ENV} or gateway.jwt_secret_file")]
    Missing,
    #[error("gateway.jwt_secret_file {path}: cannot read it")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the token secret is {0} bytes long; at least {MIN_SECRET_BYTES} are needed")]
    TooShort(usize),
    #[error("cannot sign the token")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// The token secret (its bytes are never printed).
#[derive(Clone)]
pub struct TokenSecret(Vec<u8>);

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(***)")
    }
}

impl TokenSecret {
    /// From `gateway.jwt_secret_file`, else from the environment.
    pub fn load(config: &GatewayConfig) -> Result<Self, SecretError> {
        let bytes = match &config.jwt_secret_file {
            Some(path) => std::fs::read(path)
                .map_err(|source| SecretError::File {
                    path: path.display().to_string(),
                    source,
                })?
                .trim_ascii()
                .to_vec(),
            None => std::env::var(SECRET_ENV)
                .map_err(|_| SecretError::Missing)?
                .trim()
                .as_bytes()
                .to_vec(),
        };
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort(bytes.len()));
        }
        Ok(Self(bytes))
    }
}

/// What a token says.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    /// The user id, as text (JWT subjects are strings).
    sub: String,
    /// Expiry, seconds since the epoch.
    exp: u64,
}

/// Why a request is not authenticated (all 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed,
    /// Bad signature, wrong algorithm, expired, or a subject that is no user id.
    Invalid,
}

impl AuthError {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "no bearer token",
            Self::Malformed => "the Authorization header is not `Bearer <token>`",
            Self::Invalid => "the token is invalid or expired",
        }
    }
}

/// Checks tokens.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    pub fn new(secret: &TokenSecret) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            key: DecodingKey::from_secret(&secret.0),
            validation,
        }
    }

    /// The user of an `Authorization` header's value.
    pub fn user(&self, authorization: Option<&str>) -> Result<u64, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .filter(|token| !token.is_empty() && token.len() <= 4096)
            .ok_or(AuthError::Malformed)?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|_| AuthError::Invalid)?;
        data.claims
            .sub
            .parse::<u64>()
            .ok()
            .filter(|user| i64::try_from(*user).is_ok())
            .ok_or(AuthError::Invalid)
    }
}

/// A token for `user`, valid for `ttl_secs`.
pub fn issue(secret: &TokenSecret, user: u64, ttl_secs: u64) -> Result<String, SecretError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        sub: user.to_string(),
        exp: now + ttl_secs,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&secret.0),
    )
    .map_err(SecretError::Sign)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> TokenSecret {
        TokenSecret(b"0123456789abcdef0123456789abcdef".to_vec())
    }

    #[test]
    fn tokens_name_their_user_and_forgeries_do_not() {
        let verifier = Verifier::new(&secret());
        let token = issue(&secret(), 42, 60).unwrap();
        assert_eq!(verifier.user(Some(&format!("Bearer {token}"))), Ok(42));
        assert_eq!(verifier.user(None), Err(AuthError::Missing));
        assert_eq!(verifier.user(Some(&token)), Err(AuthError::Malformed));
        let other = TokenSecret(b"another secret of thirty-two bytes!!".to_vec());
        let forged = issue(&other, 42, 60).unwrap();
        assert_eq!(
            verifier.user(Some(&format!("Bearer {forged}"))),
            Err(AuthError::Invalid)
        );
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "42".into(),
                exp: 1,
            },
            &EncodingKey::from_secret(&secret().0),
        )
        .unwrap();
        assert_eq!(
            verifier.user(Some(&format!("Bearer {expired}"))),
            Err(AuthError::Invalid)
        );
        assert_eq!(format!("{:?}", secret()), "TokenSecret(***)");
    }
}
