//! Signaling tokens: JWTs signed by the application's backend (HS256 with a
//! shared secret, or ES256/RS256 with its private key) that say who a
//! connection belongs to and which rooms it may join.

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{PublicKeyAlgorithm, SignalConfig};

/// Clock skew tolerated between the token's issuer and this server.
const LEEWAY_SECONDS: u64 = 30;

/// What a valid token says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub(crate) sub: String,
    pub(crate) exp: u64,
    /// Rooms the token may join; absent means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rooms: Option<Vec<String>>,
}

impl Claims {
    pub(crate) fn may_join(&self, room: &str) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|rooms| rooms.iter().any(|r| r == room))
    }
}

/// Why a token was refused; the name goes into the log and the 401 body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenError {
    Missing,
    Expired,
    BadSignature,
    UnknownAlgorithm,
    Malformed,
}

impl TokenError {
    pub(crate) fn name(self) -> &'static str {
        match self {
            TokenError::Missing => "token-missing",
            TokenError::Expired => "token-expired",
            TokenError::BadSignature => "token-bad-signature",
            TokenError::UnknownAlgorithm => "token-algorithm-not-accepted",
            TokenError::Malformed => "token-malformed",
        }
    }

    pub(crate) fn message(self) -> &'static str {
        match self {
            TokenError::Missing => "a token is required (?token=JWT or Authorization: Bearer JWT)",
            TokenError::Expired => "the token has expired",
            TokenError::BadSignature => "the token's signature does not verify",
            TokenError::UnknownAlgorithm => {
                "the token's algorithm has no configured key (HS256, ES256 or RS256)"
            }
            TokenError::Malformed => "the token is not a JWT with string sub and numeric exp",
        }
    }
}

/// Every configured verification key, by algorithm.
pub(crate) struct TokenVerifier {
    keys: Vec<(Algorithm, DecodingKey)>,
}

impl TokenVerifier {
    pub(crate) fn new(config: &SignalConfig) -> Self {
        let mut keys: Vec<(Algorithm, DecodingKey)> = config
            .jwt_secrets
            .iter()
            .map(|secret| {
                (
                    Algorithm::HS256,
                    DecodingKey::from_secret(secret.as_bytes()),
                )
            })
            .collect();
        for key in &config.jwt_public_keys {
            // The config loader already parsed each key this way.
            let decoded = match key.algorithm {
                PublicKeyAlgorithm::Es256 => {
                    DecodingKey::from_ec_pem(&key.pem).map(|k| (Algorithm::ES256, k))
                }
                PublicKeyAlgorithm::Rs256 => {
                    DecodingKey::from_rsa_pem(&key.pem).map(|k| (Algorithm::RS256, k))
                }
            };
            match decoded {
                Ok(entry) => keys.push(entry),
                Err(error) => log::error!("jwt key {} not usable: {error}", key.path.display()),
            }
        }
        Self { keys }
    }

    pub(crate) fn verify(&self, token: Option<&str>) -> Result<Claims, TokenError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(TokenError::Missing)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let mut validation = Validation::new(header.alg);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = LEEWAY_SECONDS;
        let mut refusal = TokenError::UnknownAlgorithm;
        for (_, key) in self.keys.iter().filter(|(alg, _)| *alg == header.alg) {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(error) => {
                    refusal = match error.kind() {
                        ErrorKind::ExpiredSignature => return Err(TokenError::Expired),
                        ErrorKind::InvalidSignature => TokenError::BadSignature,
                        _ => TokenError::Malformed,
                    }
                }
            }
        }
        Err(refusal)
    }
}

/// An HS256 token for `user`, valid `ttl` from `now` (Unix seconds).
pub(crate) fn mint(
    secret: &str,
    user: &str,
    rooms: Option<Vec<String>>,
    ttl: Duration,
    now: u64,
) -> String {
    let claims = Claims {
        sub: user.to_owned(),
        exp: now + ttl.as_secs(),
        rooms,
    };
    // Encoding a plain struct with an HMAC key cannot fail.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_SIGNAL_LIMITS, SignalAuth};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier(secrets: &[&str]) -> TokenVerifier {
        TokenVerifier::new(&SignalConfig {
            auth: SignalAuth::Jwt,
            jwt_secrets: secrets.iter().map(|s| (*s).to_owned()).collect(),
            jwt_public_keys: Vec::new(),
            allowed_origins: Vec::new(),
            limits: DEFAULT_SIGNAL_LIMITS,
            dialects: crate::config::Dialects {
                y_webrtc_path: None,
                peerjs_path: None,
                peerjs_keys: Vec::new(),
                peerjs_discovery: false,
            },
        })
    }

    fn now() -> u64 {
        crate::server::unix_now()
    }

    #[test]
    fn minted_tokens_verify_with_any_configured_secret() {
        let other = "ffffffffffffffffffffffffffffffff";
        let token = mint(SECRET, "alice", None, Duration::from_secs(60), now());
        let claims = verifier(&[other, SECRET]).verify(Some(&token)).unwrap();
        assert_eq!(claims.sub, "alice");
        assert!(claims.may_join("anything"));
        assert_eq!(
            verifier(&[other]).verify(Some(&token)).unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[test]
    fn refusals_say_why() {
        let v = verifier(&[SECRET]);
        assert_eq!(v.verify(None).unwrap_err(), TokenError::Missing);
        assert_eq!(v.verify(Some("")).unwrap_err(), TokenError::Missing);
        assert_eq!(v.verify(Some("a.b.c")).unwrap_err(), TokenError::Malformed);
        let old = mint(SECRET, "bob", None, Duration::from_secs(60), now() - 3600);
        assert_eq!(v.verify(Some(&old)).unwrap_err(), TokenError::Expired);
        let rooms = mint(
            SECRET,
            "bob",
            Some(vec!["a".into()]),
            Duration::from_secs(60),
            now(),
        );
        let claims = v.verify(Some(&rooms)).unwrap();
        assert!(claims.may_join("a") && !claims.may_join("b"));
    }
}
