//! The key of `--on-complete-secret` and the signature it gives every record
//! (`Handoff-Signature: sha256=HEX`, HMAC-SHA256 of `TIMESTAMP.BODY`).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// The key of `--on-complete-secret`: the file's bytes without a final newline.
#[derive(Clone)]
pub struct Secret(Arc<Vec<u8>>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading {path:?}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path:?}: the secret must be at least 16 bytes (it is {len})")]
    Short { path: PathBuf, len: usize },
}

impl Secret {
    /// Reads the secret at start-up, before the sandbox closes the filesystem.
    pub fn read(path: &std::path::Path) -> Result<Secret, SecretError> {
        let mut key = std::fs::read(path).map_err(|source| SecretError::Read {
            path: path.into(),
            source,
        })?;
        while key.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
            key.pop();
        }
        if key.len() < 16 {
            return Err(SecretError::Short {
                path: path.into(),
                len: key.len(),
            });
        }
        Ok(Secret(Arc::new(key)))
    }

    /// `sha256=HEX`: HMAC-SHA256 of `TIMESTAMP.BODY`.
    pub fn sign(&self, timestamp: u64, body: &str) -> String {
        use hmac::{Hmac, Mac};
        // HMAC takes a key of any length.
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(&self.0) else {
            return String::new();
        };
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::from("sha256=");
        for b in digest {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signature is HMAC-SHA256 of `TIMESTAMP.BODY`; the expected value was computed
    /// with Python's `hmac` module.
    #[test]
    fn signatures_depend_on_key_timestamp_and_body() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef\n").unwrap();
        let key = Secret::read(&path).unwrap();
        let sig = key.sign(1_700_000_000, "{}");
        assert_eq!(
            sig,
            "sha256=e4f8e2ecae2295b2ddb2f0b5584c8275e226c0ebe9b3b819e70156bb67122e3e"
        );
        assert_ne!(sig, key.sign(1_700_000_001, "{}"));
        assert_ne!(sig, key.sign(1_700_000_000, "{ }"));
        std::fs::write(&path, "0123456789abcdeF").unwrap();
        assert_ne!(sig, Secret::read(&path).unwrap().sign(1_700_000_000, "{}"));
        std::fs::write(&path, "short\n").unwrap();
        assert!(matches!(
            Secret::read(&path),
            Err(SecretError::Short { len: 5, .. })
        ));
    }
}
