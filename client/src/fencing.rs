//! Fencing for resources outside corral: [`FencingValidator`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a [`FencingValidator`] refused a token.
///
/// ```
/// use corral_client::{FencingError, FencingValidator};
/// let v = FencingValidator::new();
/// v.validate(9).unwrap();
/// assert_eq!(v.validate(3), Err(FencingError::Stale { token: 3, highest: 9 }));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum FencingError {
    /// A newer holder of the lock has already been accepted.
    #[error("stale fencing token {token}: token {highest} was already accepted")]
    Stale {
        /// The refused token.
        token: u64,
        /// The highest token accepted so far.
        highest: u64,
    },
}

/// The check a resource outside corral (a database, a file store, a service) makes on
/// every write guarded by a corral lock: it remembers the highest fencing token it has
/// accepted and refuses any lower one. Thread-safe and lock-free; keep one per resource
/// (and persist [`highest`](Self::highest) with the resource if it must survive
/// restarts: restore it with [`starting_at`](Self::starting_at)).
///
/// # What it prevents
///
/// A lock alone cannot stop a holder that does not know it lost the lock:
///
/// 1. Client A holds the lock with token 33 and starts a write to the resource.
/// 2. A pauses (a GC pause, a stopped VM, a slow disk) for longer than its TTL. Its
///    lease expires on the server.
/// 3. B acquires the lock with token 34 (tokens of one lock strictly increase) and
///    writes to the resource: the validator accepts 34.
/// 4. A wakes up and, still believing it holds the lock, sends its write with token 33.
///    The validator refuses it: `Stale { token: 33, highest: 34 }`. B's write stands.
///
/// Writes to corral itself are fenced by the server with
/// [`LockGuard::check_op`](crate::LockGuard::check_op) in a multi instead.
///
/// ```no_run
/// use corral_client::{FencingError, FencingValidator, LockOptions};
/// use std::time::Duration;
///
/// // Inside the resource (shared by every request handler):
/// struct Store { fence: FencingValidator, /* ... */ }
/// impl Store {
///     fn write(&self, token: u64, _data: &[u8]) -> Result<(), FencingError> {
///         self.fence.validate(token)?; // refuse writes from former holders
///         // ... apply the write ...
///         Ok(())
///     }
/// }
///
/// # async fn demo(client: corral_client::Client, store: &Store) -> corral_client::Result<()> {
/// // In a client:
/// let options = LockOptions::default().with_ttl(Duration::from_secs(5));
/// let guard = client.lock("/locks/store", options).acquire().await?;
/// if let Err(FencingError::Stale { token, highest }) = store.write(guard.token(), b"data") {
///     eprintln!("lost the lock: token {token} is older than {highest}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct FencingValidator {
    highest: AtomicU64,
}

impl FencingValidator {
    /// A validator that has accepted nothing yet (every token passes once).
    ///
    /// ```
    /// assert_eq!(corral_client::FencingValidator::new().highest(), 0);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// A validator that already accepted `highest` (restored from the resource).
    ///
    /// ```
    /// let v = corral_client::FencingValidator::starting_at(40);
    /// assert!(v.validate(39).is_err());
    /// assert!(v.validate(40).is_ok());
    /// ```
    pub fn starting_at(highest: u64) -> Self {
        FencingValidator {
            highest: AtomicU64::new(highest),
        }
    }

    /// Accepts `token` if no higher token was accepted before (the current holder may
    /// write many times with the same token), remembering it as the highest; refuses it
    /// with [`FencingError::Stale`] otherwise.
    ///
    /// ```
    /// use corral_client::FencingValidator;
    /// let v = FencingValidator::new();
    /// assert!(v.validate(5).is_ok());
    /// assert!(v.validate(5).is_ok());
    /// assert!(v.validate(7).is_ok());
    /// assert!(v.validate(6).is_err());
    /// ```
    pub fn validate(&self, token: u64) -> Result<(), FencingError> {
        let previous = self.highest.fetch_max(token, Ordering::AcqRel);
        if token >= previous {
            Ok(())
        } else {
            Err(FencingError::Stale {
                token,
                highest: previous,
            })
        }
    }

    /// The highest token accepted so far (0 if none).
    ///
    /// ```
    /// let v = corral_client::FencingValidator::new();
    /// v.validate(12).unwrap();
    /// assert_eq!(v.highest(), 12);
    /// ```
    pub fn highest(&self) -> u64 {
        self.highest.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_paused_holder_is_refused() {
        let store = FencingValidator::new();
        let a = 33;
        assert_eq!(store.validate(a), Ok(()));
        // A pauses; B is granted the lock with a higher token and writes.
        let b = 34;
        assert_eq!(store.validate(b), Ok(()));
        assert_eq!(store.validate(b), Ok(()), "the holder writes again");
        // A wakes up and writes with its old token.
        assert_eq!(
            store.validate(a),
            Err(FencingError::Stale {
                token: 33,
                highest: 34
            })
        );
        assert_eq!(store.highest(), 34, "a refusal changes nothing");
    }

    #[test]
    fn concurrent_validations_keep_the_maximum() {
        let v = Arc::new(FencingValidator::starting_at(10));
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let v = v.clone();
                std::thread::spawn(move || {
                    let mut accepted = 0;
                    for i in 0..1000u64 {
                        if v.validate(i * 8 + t).is_ok() {
                            accepted += 1;
                        }
                    }
                    accepted
                })
            })
            .collect();
        let accepted: u64 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        assert_eq!(v.highest(), 999 * 8 + 7);
        assert!(accepted > 0);
        assert!(v.validate(10).is_err());
    }
}
