//! Passwords: how they are made, and how they are kept out of every output.
//!
//! A `Password` has no `Display` and a redacted `Debug`, so it cannot be
//! printed by accident. Every password the process handles is also registered
//! with `redact`, which all output passes through as a second line of defence
//! (for example for container logs shown in an error).

use std::fmt;
use std::sync::Mutex;

use rand::rngs::OsRng;
use rand::TryRngCore;

/// 48 characters from a 62-letter alphabet: log2(62^48) ≈ 285 bits.
pub const PASSWORD_LEN: usize = 48;
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

static KNOWN_SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub struct Password(String);

impl Password {
    /// A new password from the OS random source, drawn without modulo bias.
    pub fn generate() -> anyhow::Result<Password> {
        let mut out = String::with_capacity(PASSWORD_LEN);
        let mut buf = [0u8; 64];
        while out.len() < PASSWORD_LEN {
            OsRng
                .try_fill_bytes(&mut buf)
                .map_err(|e| anyhow::anyhow!("cannot read the OS random source: {e}"))?;
            // 248 = 4 * 62: bytes at or above it would favour the first letters.
            for b in buf.iter().filter(|b| **b < 248) {
                if out.len() < PASSWORD_LEN {
                    out.push(ALPHABET[usize::from(*b) % ALPHABET.len()] as char);
                }
            }
        }
        register(&out);
        Ok(Password(out))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The `VALKEY_URL` the clients get, in the seed guide's form.
    pub fn valkey_url(&self, host: &str) -> String {
        format!("redis://:{}@{host}:6379", self.0)
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        // Overwrite the bytes so the password does not linger in freed memory
        // (zeroize's writes are not optimised away).
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// Remembers a secret value so `redact` can hide it.
pub fn register(secret: &str) {
    if !secret.is_empty() {
        KNOWN_SECRETS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(secret.to_string());
    }
}

/// Replaces every registered secret, and anything following `requirepass`,
/// with `<redacted>`.
pub fn redact(text: &str) -> String {
    let mut out = text.to_string();
    for secret in KNOWN_SECRETS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        out = out.replace(secret.as_str(), "<redacted>");
    }
    if out.contains("requirepass ") {
        out = out
            .split('\n')
            .map(|line| match line.find("requirepass ") {
                Some(i) => format!("{}requirepass <redacted>", &line[..i]),
                None => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
    }
    out
}

/// The secrets of a password generation and evi-install's own password, as
/// Podman secrets: what gets created, under which names and labels.
/// Creates both secrets of a password generation.
///
/// The URL secret goes first: the password secret's presence is what marks a
/// generation complete, so an interruption between the two leaves an
/// incomplete pair that the next run skips and cleans up.
pub async fn create_secret_pair<E: crate::engine::Engine>(
    engine: &E,
    version: crate::model::SecretVersion,
    password: &Password,
) -> anyhow::Result<()> {
    use crate::desired::secret_labels;
    use crate::model::{SecretRole, STATE_CONTAINER};
    engine
        .create_secret(
            &version.url_name(),
            &secret_labels(version, SecretRole::ValkeyUrl),
            &password.valkey_url(STATE_CONTAINER),
        )
        .await?;
    engine
        .create_secret(
            &version.password_name(),
            &secret_labels(version, SecretRole::Password),
            password.expose(),
        )
        .await
}

/// Creates evi-install's own password (Valkey user `evi-admin`) in `ADMIN_SECRET`.
pub async fn create_admin_secret<E: crate::engine::Engine>(engine: &E) -> anyhow::Result<()> {
    let password = Password::generate()?;
    engine
        .create_secret(
            crate::model::ADMIN_SECRET,
            &crate::desired::owned_labels(),
            password.expose(),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_alphanumeric_and_distinct() {
        let a = Password::generate().unwrap();
        let b = Password::generate().unwrap();
        assert_eq!(a.expose().len(), PASSWORD_LEN);
        assert!(a.expose().bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a.expose(), b.expose());
        assert!((PASSWORD_LEN as f64) * 62f64.log2() >= 256.0);
    }

    #[test]
    fn debug_and_redact_hide_the_password() {
        let p = Password::generate().unwrap();
        assert_eq!(format!("{p:?}"), "Password(<redacted>)");
        let text = format!(
            "url {} and requirepass xyz\nnext",
            p.valkey_url("evi-state")
        );
        let clean = redact(&text);
        assert!(!clean.contains(p.expose()));
        assert_eq!(
            clean,
            "url redis://:<redacted>@evi-state:6379 and requirepass <redacted>\nnext"
        );
    }
}
