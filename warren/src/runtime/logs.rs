//! Reading a container's log file (written by the containerd shim, stdout and
//! stderr interleaved): the last N lines, then optionally following new lines as they
//! are appended. Not writing logs, nor rotating them.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::error::RuntimeError;
use super::LogStream;

const POLL: Duration = Duration::from_millis(200);
const BLOCK: usize = 64 << 10;

/// Which lines to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Only the last N lines (all when None).
    pub tail: Option<usize>,
    /// Keep streaming lines as they are written, until the stream is dropped.
    pub follow: bool,
}

/// Byte offset where the last `n` lines of the file begin.
async fn tail_offset(file: &mut tokio::fs::File, n: usize) -> std::io::Result<u64> {
    let len = file.metadata().await?.len();
    if n == 0 {
        return Ok(len);
    }
    let mut end = len;
    let mut newlines = 0usize;
    // A final newline terminates the last line; it does not start a new one.
    let mut skip_last = true;
    let mut buf = vec![0u8; BLOCK];
    while end > 0 {
        let start = end.saturating_sub(BLOCK as u64);
        let size = (end - start) as usize;
        file.seek(SeekFrom::Start(start)).await?;
        file.read_exact(&mut buf[..size]).await?;
        for i in (0..size).rev() {
            if buf[i] == b'\n' {
                if skip_last && start + i as u64 == len - 1 {
                    skip_last = false;
                    continue;
                }
                newlines += 1;
                if newlines == n {
                    return Ok(start + i as u64 + 1);
                }
            }
        }
        skip_last = false;
        end = start;
    }
    Ok(0)
}

struct State {
    path: PathBuf,
    file: tokio::fs::File,
    pos: u64,
    buf: Vec<u8>,
    follow: bool,
    done: bool,
}

fn take_line(buf: &mut Vec<u8>) -> Option<String> {
    let i = buf.iter().position(|b| *b == b'\n')?;
    let mut line: Vec<u8> = buf.drain(..=i).collect();
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Some(String::from_utf8_lossy(&line).into_owned())
}

/// Streams the lines of `path` as `options` say.
pub(crate) async fn stream(path: &Path, options: LogOptions) -> Result<LogStream, RuntimeError> {
    let ctx = || format!("read log {}", path.display());
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| RuntimeError::io(ctx(), e))?;
    let pos = match options.tail {
        Some(n) => tail_offset(&mut file, n)
            .await
            .map_err(|e| RuntimeError::io(ctx(), e))?,
        None => 0,
    };
    file.seek(SeekFrom::Start(pos))
        .await
        .map_err(|e| RuntimeError::io(ctx(), e))?;
    let state = State {
        path: path.to_path_buf(),
        file,
        pos,
        buf: Vec::new(),
        follow: options.follow,
        done: false,
    };
    let s = futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let mut chunk = vec![0u8; BLOCK];
        loop {
            if let Some(line) = take_line(&mut st.buf) {
                return Some((Ok(line), st));
            }
            match st.file.read(&mut chunk).await {
                Ok(0) => {
                    if !st.follow {
                        st.done = true;
                        if st.buf.is_empty() {
                            return None;
                        }
                        let rest = String::from_utf8_lossy(&std::mem::take(&mut st.buf)).into_owned();
                        return Some((Ok(rest), st));
                    }
                    // The file was truncated or replaced: start over from its beginning.
                    let len = tokio::fs::metadata(&st.path).await.map(|m| m.len()).unwrap_or(st.pos);
                    if len < st.pos {
                        match tokio::fs::File::open(&st.path).await {
                            Ok(f) => {
                                st.file = f;
                                st.pos = 0;
                                st.buf.clear();
                            }
                            Err(e) => {
                                st.done = true;
                                let err = RuntimeError::io(format!("read log {}", st.path.display()), e);
                                return Some((Err(err), st));
                            }
                        }
                        continue;
                    }
                    tokio::time::sleep(POLL).await;
                }
                Ok(n) => {
                    st.pos += n as u64;
                    st.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) => {
                    st.done = true;
                    let err = RuntimeError::io(format!("read log {}", st.path.display()), e);
                    return Some((Err(err), st));
                }
            }
        }
    });
    Ok(s.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    async fn collect(path: &Path, tail: Option<usize>) -> Vec<String> {
        stream(path, LogOptions { tail, follow: false })
            .await
            .unwrap()
            .map(|l| l.unwrap())
            .collect()
            .await
    }

    #[tokio::test]
    async fn tail_returns_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.log");
        let text: String = (1..=5000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, &text).unwrap();
        assert_eq!(collect(&p, Some(2)).await, ["line 4999", "line 5000"]);
        assert_eq!(collect(&p, None).await.len(), 5000);
        assert_eq!(collect(&p, Some(0)).await, Vec::<String>::new());
        assert_eq!(collect(&p, Some(10_000)).await.len(), 5000);
        std::fs::write(&p, "a\nb\npartial").unwrap();
        assert_eq!(collect(&p, Some(2)).await, ["b", "partial"]);
    }

    #[tokio::test]
    async fn follow_sees_appended_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.log");
        std::fs::write(&p, "old\n").unwrap();
        let mut s = stream(
            &p,
            LogOptions {
                tail: Some(1),
                follow: true,
            },
        )
        .await
        .unwrap();
        assert_eq!(s.next().await.unwrap().unwrap(), "old");
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"new 1\nnew").unwrap();
        assert_eq!(s.next().await.unwrap().unwrap(), "new 1");
        f.write_all(b" 2\n").unwrap();
        assert_eq!(s.next().await.unwrap().unwrap(), "new 2");
    }

    #[tokio::test]
    async fn missing_log_names_the_file() {
        let e = match stream(Path::new("/nonexistent/x.log"), LogOptions::default()).await {
            Err(e) => e,
            Ok(_) => panic!("no error"),
        };
        assert!(e.to_string().starts_with("read log /nonexistent/x.log: "), "{e}");
    }
}
