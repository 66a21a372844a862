//! Bodies that need not fit in memory: a [`Spool`] keeps the first bytes in memory and the rest
//! in an unlinked temp file (nginx's client body and proxy buffers, then `*_temp_path`), and a
//! [`Decoder`] takes an upstream's chunked framing apart as bytes arrive.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Bytes kept in memory up to a limit, then in a temp file.
pub struct Spool {
    mem: Vec<u8>,
    limit: usize,
    dir: PathBuf,
    file: Option<tokio::fs::File>,
    len: u64,
    /// Past this many bytes in the file, writing fails (`proxy_max_temp_file_size`; 0: none).
    max_file: u64,
    file_len: u64,
}

static SEQ: AtomicU64 = AtomicU64::new(1);

impl Spool {
    pub fn new(limit: usize, dir: &Path, max_file: u64) -> Spool {
        Spool {
            mem: Vec::new(),
            limit,
            dir: dir.to_path_buf(),
            file: None,
            len: 0,
            max_file,
            file_len: 0,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether part of the body went to a file.
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    pub async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.len += data.len() as u64;
        if self.file.is_none() && self.mem.len() + data.len() <= self.limit {
            self.mem.extend_from_slice(data);
            return Ok(());
        }
        if self.file.is_none() {
            std::fs::create_dir_all(&self.dir)?;
            let path = self.dir.join(format!(
                "{:010}",
                SEQ.fetch_add(1, Ordering::Relaxed) + u64::from(std::process::id()) * 1_000_000
            ));
            let file = tokio::fs::OpenOptions::new()
                .create_new(true)
                .read(true)
                .write(true)
                .open(&path)
                .await?;
            // Unlinked at once, as nginx does: the file goes away with its handle.
            let _ = std::fs::remove_file(&path);
            self.file = Some(file);
        }
        if self.max_file > 0 && self.file_len + data.len() as u64 > self.max_file {
            return Err(std::io::Error::other("temp file size limit reached"));
        }
        self.file_len += data.len() as u64;
        let f = self.file.as_mut().expect("opened above");
        f.write_all(data).await
    }

    /// Calls `each` with the whole content, in pieces, from the start.
    pub async fn replay<F, Fut>(&mut self, mut each: F) -> std::io::Result<()>
    where
        F: FnMut(Vec<u8>) -> Fut,
        Fut: std::future::Future<Output = std::io::Result<()>>,
    {
        if !self.mem.is_empty() {
            each(self.mem.clone()).await?;
        }
        if let Some(f) = self.file.as_mut() {
            f.flush().await?;
            f.seek(std::io::SeekFrom::Start(0)).await?;
            let mut left = self.file_len;
            while left > 0 {
                let mut chunk = vec![0u8; left.min(65536) as usize];
                let n = f.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                chunk.truncate(n);
                left -= n as u64;
                each(chunk).await?;
            }
        }
        Ok(())
    }
}

/// Incremental chunked-encoding decoder.
#[derive(Debug, Default)]
pub struct Decoder {
    state: State,
    line: Vec<u8>,
    remaining: usize,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    Size,
    Data,
    DataEnd,
    Trailers,
    Done,
}

/// The decoder found the framing broken.
#[derive(Debug)]
pub struct Malformed;

impl Decoder {
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds `input`; decoded data is appended to `out`. Bytes after the end are ignored.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
        while !input.is_empty() && self.state != State::Done {
            match self.state {
                State::Size | State::DataEnd | State::Trailers => {
                    let Some(nl) = input.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(input);
                        if self.line.len() > 4096 {
                            return Err(Malformed);
                        }
                        return Ok(());
                    };
                    self.line.extend_from_slice(&input[..nl]);
                    input = &input[nl + 1..];
                    let line = std::mem::take(&mut self.line);
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim();
                    match self.state {
                        State::Size => {
                            let size = text.split(';').next().unwrap_or("").trim();
                            let n = usize::from_str_radix(size, 16).map_err(|_| Malformed)?;
                            if n == 0 {
                                self.state = State::Trailers;
                            } else {
                                self.remaining = n;
                                self.state = State::Data;
                            }
                        }
                        State::DataEnd => {
                            if !text.is_empty() {
                                return Err(Malformed);
                            }
                            self.state = State::Size;
                        }
                        _ => {
                            if text.is_empty() {
                                self.state = State::Done;
                            }
                        }
                    }
                }
                State::Data => {
                    let n = self.remaining.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.remaining -= n;
                    if self.remaining == 0 {
                        self.state = State::DataEnd;
                    }
                }
                State::Done => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_in_any_pieces() {
        let raw = b"3\r\nabc\r\n10;ext=1\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\nrest";
        for split in 1..raw.len() {
            let mut d = Decoder::default();
            let mut out = Vec::new();
            d.feed(&raw[..split], &mut out).unwrap();
            d.feed(&raw[split..], &mut out).unwrap();
            assert!(d.done());
            assert_eq!(out, b"abc0123456789abcdef");
        }
        assert!(Decoder::default().feed(b"zz\r\n", &mut Vec::new()).is_err());
    }

    #[tokio::test]
    async fn spills_to_a_file_and_replays() {
        let dir = std::env::temp_dir().join("portico-spool-test");
        let mut s = Spool::new(10, &dir, 0);
        s.write(b"0123456789").await.unwrap();
        assert!(!s.spilled());
        s.write(b"abcdef").await.unwrap();
        assert!(s.spilled());
        let mut all = Vec::new();
        let all_ref = &mut all;
        s.replay(|c| {
            all_ref.extend_from_slice(&c);
            async { Ok(()) }
        })
        .await
        .unwrap();
        assert_eq!(all, b"0123456789abcdef");
    }
}
