//! Where a command's data comes from: its argument, or a file given with `--file PATH` /
//! `--data-file PATH` (`-` for stdin), read as bytes. An argument is capped by the
//! kernel (about 128 KiB) and must be UTF-8; a file or stdin carries anything up to the
//! server's `max_data_bytes`.

use corral_client::{Error, ErrorCode, ErrorInfo};
use std::io::Read;
use std::path::Path;

/// The file name that stands for stdin.
pub const STDIN: &str = "-";

/// Help shown for `--file` / `--data-file`.
pub const FILE_HELP: &str = "Read the data from this file instead, as raw bytes \
     (any bytes, up to the server's max_data_bytes); `-` reads it from stdin";

/// The data of a command: the bytes of `file` (stdin for `-`) if given, else those of
/// `arg`; `None` when neither was given. Reads at most `max` bytes, the most one
/// request can carry: more fails (with `FrameTooLarge`) before anything is sent.
pub fn load(arg: Option<&str>, file: Option<&Path>, max: usize) -> Result<Option<Vec<u8>>, Error> {
    let Some(file) = file else {
        return Ok(arg.map(|text| text.as_bytes().to_vec()));
    };
    let (what, data) = if file.as_os_str() == STDIN {
        (
            "stdin".to_string(),
            read_capped(std::io::stdin().lock(), max),
        )
    } else {
        let what = file.display().to_string();
        let data = std::fs::File::open(file).and_then(|f| read_capped(f, max));
        (what, data)
    };
    let data = data.map_err(|e| std::io::Error::new(e.kind(), format!("{what}: {e}")))?;
    if data.len() > max {
        return Err(Error::Server(ErrorInfo::new(
            ErrorCode::FrameTooLarge,
            format!(
                "the data from {what} is larger than {max} bytes, more than one request \
                 can carry (--max-frame-bytes); the server refuses data over its \
                 max_data_bytes (1 MiB by default)"
            ),
        )));
    }
    Ok(Some(data))
}

/// Reads `from` to its end, or to one byte past `max`.
fn read_capped(from: impl Read, max: usize) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    from.take(u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut data)?;
    Ok(data)
}

/// A write whose request was too large to send (`FrameTooLarge` from the client, whose
/// message starts "frame of": data close to the frame limit, whose request with its
/// header is over it) says so in terms of the data. Other errors, a response too large
/// for corralctl's limit among them, are left as they are.
pub fn explain(e: Error, data_len: usize) -> Error {
    match e {
        Error::Server(info)
            if info.code == ErrorCode::FrameTooLarge && info.message.starts_with("frame of") =>
        {
            Error::Server(ErrorInfo::new(
                ErrorCode::FrameTooLarge,
                format!(
                    "the data ({data_len} bytes) does not fit in one request: {}; the \
                     server refuses data over its max_data_bytes (1 MiB by default)",
                    info.message
                ),
            ))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_file_or_takes_the_argument() {
        let dir = std::env::temp_dir().join(format!("corralctl-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("value");
        let bytes: Vec<u8> = (0..=255u8).collect();
        std::fs::write(&file, &bytes).expect("write");
        assert_eq!(load(Some("x"), None, 10).ok(), Some(Some(b"x".to_vec())));
        assert_eq!(load(None, None, 10).ok(), Some(None));
        // The file wins over nothing; its bytes are taken as they are.
        assert_eq!(load(None, Some(&file), 256).ok(), Some(Some(bytes)));
        let over = load(None, Some(&file), 255).expect_err("over the limit");
        assert_eq!(over.code(), Some(ErrorCode::FrameTooLarge));
        let missing = load(None, Some(&dir.join("missing")), 10).expect_err("missing");
        assert!(missing.to_string().contains("missing"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
