//! Freeing large values off the node's core: dropping the trimmed entries of a compaction
//! or the state a snapshot install replaced frees every allocation in them, which takes
//! the core tens to hundreds of milliseconds with a large state.

/// Drops `value` on a short-lived thread of its own (`corral-free`), or here if no thread
/// can be started.
pub fn free_elsewhere<T: Send + 'static>(value: T) {
    let spawned = std::thread::Builder::new()
        .name("corral-free".to_string())
        .spawn(move || drop(value));
    if let Err(e) = spawned {
        // The closure, and the value with it, were dropped here instead.
        tracing::debug!(error = %e, "cannot start a thread to free a large value");
    }
}
