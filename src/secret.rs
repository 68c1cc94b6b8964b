//! A secret value that can never be printed.
//!
//! Keys for push tokens, shared keys and webhook secrets live in this type so
//! that a stray `{:?}` in a log line or an error message shows nothing of them.

use subtle::ConstantTimeEq;

/// Secret bytes. `Debug` prints a placeholder and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps raw secret bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    /// The raw bytes, for the code that signs or compares with them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (used by configuration checks; reveals no content).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the secret is empty, which configuration refuses.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares with presented bytes in constant time (for equal lengths).
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.ct_eq(presented).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2-very-secret");
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(shown, "Secret(<redacted>)");
    }

    #[test]
    fn matches_only_the_same_bytes() {
        let s = Secret::new("abc");
        assert!(s.matches(b"abc"));
        assert!(!s.matches(b"abd"));
        assert!(!s.matches(b"ab"));
        assert!(!s.matches(b"abcd"));
    }
}
