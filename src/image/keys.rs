//! The passphrases of the encrypted images an operation reads, lent by it
//! for its duration: the image readers find an image's by its path. They
//! live in memory only, are wiped when the last lender is done, and are
//! never written anywhere.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Lent passphrases: an image's path, its passphrase.
static KEYS: Mutex<Vec<(PathBuf, Arc<Vec<u8>>)>> = Mutex::new(Vec::new());

/// Passphrases lent until this is dropped.
pub(crate) struct Lent(Vec<PathBuf>);

/// Lend `keys` (image path, passphrase) to the readers.
pub(crate) fn lend(keys: Vec<(PathBuf, Vec<u8>)>) -> Lent {
    let mut all = KEYS.lock().unwrap_or_else(|e| e.into_inner());
    let paths = keys.iter().map(|(p, _)| p.clone()).collect();
    all.extend(keys.into_iter().map(|(p, k)| (p, Arc::new(k))));
    Lent(paths)
}

/// The passphrase lent for the image at `path`, if any.
pub(crate) fn passphrase(path: &Path) -> Option<Arc<Vec<u8>>> {
    let all = KEYS.lock().unwrap_or_else(|e| e.into_inner());
    all.iter()
        .rev()
        .find(|(p, _)| p == path)
        .map(|(_, k)| Arc::clone(k))
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut all = KEYS.lock().unwrap_or_else(|e| e.into_inner());
        for p in &self.0 {
            if let Some(i) = all.iter().rposition(|(q, _)| q == p) {
                let (_, k) = all.remove(i);
                // Wiped unless a reader still holds it (it wipes nothing
                // then: the last holder's copy goes with it).
                if let Ok(mut k) = Arc::try_unwrap(k) {
                    k.fill(0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lent_while_held() {
        let p = PathBuf::from("/nowhere/keys-test.qcow2");
        assert!(passphrase(&p).is_none());
        let a = lend(vec![(p.clone(), b"one".to_vec())]);
        let b = lend(vec![(p.clone(), b"two".to_vec())]);
        assert_eq!(passphrase(&p).unwrap().as_slice(), b"two");
        drop(b);
        assert_eq!(passphrase(&p).unwrap().as_slice(), b"one");
        drop(a);
        assert!(passphrase(&p).is_none());
    }
}
