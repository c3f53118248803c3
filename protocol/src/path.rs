//! Znode path rules, shared by the client (to fail fast) and the server (to enforce).

use crate::error::{ErrorCode, ErrorInfo};

/// Longest path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// Checks that `path` is a valid znode path: absolute, `/`-separated, no empty segment,
/// no trailing slash (except the root `/` itself), no `.` or `..` segment, no control
/// characters, at most [`MAX_PATH_BYTES`] bytes.
///
/// ```
/// use corral_protocol::path::validate_path;
/// assert!(validate_path("/locks/jobs").is_ok());
/// assert!(validate_path("locks").is_err());
/// assert!(validate_path("/a//b").is_err());
/// ```
pub fn validate_path(path: &str) -> Result<(), ErrorInfo> {
    let fail = |why: &str| {
        Err(ErrorInfo::new(
            ErrorCode::InvalidPath,
            format!("invalid path {:?}: {why}", truncate_for_message(path)),
        ))
    };
    if path.len() > MAX_PATH_BYTES {
        return fail(&format!(
            "{} bytes is longer than the limit of {MAX_PATH_BYTES}",
            path.len()
        ));
    }
    if !path.starts_with('/') {
        return fail("must start with '/'");
    }
    if path == "/" {
        return Ok(());
    }
    if path.ends_with('/') {
        return fail("must not end with '/'");
    }
    for segment in path[1..].split('/') {
        match segment {
            "" => return fail("empty segment ('//')"),
            "." | ".." => return fail("'.' and '..' segments are not allowed"),
            _ => {}
        }
        if let Some(c) = segment.chars().find(|c| is_forbidden(*c)) {
            return fail(&format!("contains the forbidden character {:?}", c));
        }
    }
    Ok(())
}

/// Characters ZooKeeper forbids in paths: controls, surrogates' neighbours and
/// non-characters.
fn is_forbidden(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{f000}'..='\u{f8ff}' | '\u{fff0}'..='\u{ffff}')
}

fn truncate_for_message(path: &str) -> &str {
    let mut end = path.len().min(120);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path[..end]
}

/// The parent of a valid path, or `None` for the root.
///
/// ```
/// use corral_protocol::path::parent;
/// assert_eq!(parent("/a/b"), Some("/a"));
/// assert_eq!(parent("/a"), Some("/"));
/// assert_eq!(parent("/"), None);
/// ```
pub fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

/// The last segment of a valid path (empty for the root).
///
/// ```
/// use corral_protocol::path::name;
/// assert_eq!(name("/a/b"), "b");
/// ```
pub fn name(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Joins a parent path and a child name.
///
/// ```
/// use corral_protocol::path::join;
/// assert_eq!(join("/", "a"), "/a");
/// assert_eq!(join("/a", "b"), "/a/b");
/// ```
pub fn join(parent: &str, child: &str) -> String {
    let mut path = String::with_capacity(parent.len() + 1 + child.len());
    if parent != "/" {
        path.push_str(parent);
    }
    path.push('/');
    path.push_str(child);
    path
}

/// The path a sequential create of `prefix` gets for its parent's counter `seq`: the
/// prefix followed by the counter in ten digits, zero-padded (more digits past
/// 9,999,999,999), as ZooKeeper names sequential nodes.
///
/// ```
/// use corral_protocol::path::sequential;
/// assert_eq!(sequential("/locks/lock-", 42), "/locks/lock-0000000042");
/// assert_eq!(sequential("/q/", 12_345_678_901), "/q/12345678901");
/// ```
pub fn sequential(prefix: &str, seq: u64) -> String {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    let mut rest = seq;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let start = at.min(digits.len() - 10);
    let mut path = String::with_capacity(prefix.len() + digits.len() - start);
    path.push_str(prefix);
    for &d in &digits[start..] {
        path.push(char::from(d));
    }
    path
}

/// Whether `path` is `ancestor` or lies below it.
pub fn is_within(path: &str, ancestor: &str) -> bool {
    ancestor == "/"
        || path == ancestor
        || (path.starts_with(ancestor) && path.as_bytes().get(ancestor.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_and_rejects() {
        for ok in [
            "/",
            "/a",
            "/a/b",
            "/a-b_c.d/e f",
            "/ünï/cødé",
            "/a..b",
            "/.a",
        ] {
            assert!(validate_path(ok).is_ok(), "{ok} should be valid");
        }
        for bad in [
            "", "a", "a/b", "/a/", "//", "/a//b", "/./a", "/a/..", "/a/\u{0}", "/a\nb",
        ] {
            let err = validate_path(bad).expect_err(bad);
            assert_eq!(err.code, ErrorCode::InvalidPath);
        }
        let long = format!("/{}", "x".repeat(MAX_PATH_BYTES));
        assert!(validate_path(&long).is_err());
        let max = format!("/{}", "x".repeat(MAX_PATH_BYTES - 1));
        assert!(validate_path(&max).is_ok());
    }

    #[test]
    fn within() {
        assert!(is_within("/a/b", "/a"));
        assert!(is_within("/a", "/a"));
        assert!(!is_within("/ab", "/a"));
        assert!(is_within("/x", "/"));
    }

    proptest! {
        #[test]
        fn sequential_names_are_ten_zero_padded_digits(prefix in "/[a-z]{0,8}", seq in any::<u64>()) {
            prop_assert_eq!(sequential(&prefix, seq), format!("{prefix}{seq:010}"));
            prop_assert_eq!(sequential(&prefix, seq % 1000), format!("{prefix}{:010}", seq % 1000));
        }

        #[test]
        fn parent_and_name_rebuild_the_path(segs in proptest::collection::vec("[a-z0-9]{1,8}", 1..6)) {
            let path = format!("/{}", segs.join("/"));
            prop_assert!(validate_path(&path).is_ok());
            let p = parent(&path).expect("a path with a segment has a parent");
            prop_assert_eq!(join(p, name(&path)), path.clone());
            prop_assert!(validate_path(p).is_ok());
        }

        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = validate_path(&s);
        }
    }
}
