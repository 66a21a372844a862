//! Bodies that need not fit in memory: a [`Spool`] keeps the first bytes in memory and the rest
//! in an unlinked temp file (nginx's client body and proxy buffers, then `*_temp_path`), and a
//! [`Decoder`] takes an upstream's chunked framing apart as bytes arrive.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt};

use super::http1::Framing;

/// A request body kept whole so that it can be sent to one upstream after another: the first
/// bytes in memory (`client_body_buffer_size`), the rest in an unlinked temp file
/// (`client_body_temp_path`).
pub struct Spool {
    mem: Vec<u8>,
    limit: usize,
    dir: PathBuf,
    file: Option<std::fs::File>,
    len: u64,
}

static SEQ: AtomicU64 = AtomicU64::new(1);

impl Spool {
    pub fn new(limit: usize, dir: &Path) -> Spool {
        Spool {
            mem: Vec::new(),
            limit,
            dir: dir.to_path_buf(),
            file: None,
            len: 0,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether part of the body went to a file.
    #[cfg(test)]
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// The whole body when it stayed in memory (nginx's `$request_body`), else `None`.
    pub fn in_memory(&self) -> Option<&[u8]> {
        self.file.is_none().then_some(&self.mem[..])
    }

    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if self.file.is_none() && self.mem.len() + data.len() <= self.limit {
            self.mem.extend_from_slice(data);
            self.len += data.len() as u64;
            return Ok(());
        }
        if self.file.is_none() {
            self.file = Some(temp_file(&self.dir)?);
        }
        let f = self.file.as_ref().expect("created above");
        f.write_all_at(data, self.len - self.mem.len() as u64)?;
        self.len += data.len() as u64;
        Ok(())
    }

    /// The bytes from `pos` on, at most 64 KiB of them; empty at the end.
    pub fn piece(&self, pos: u64) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mem = self.mem.len() as u64;
        if pos < mem {
            let end = (pos as usize + 65536).min(self.mem.len());
            return Ok(self.mem[pos as usize..end].to_vec());
        }
        let Some(f) = &self.file else {
            return Ok(Vec::new());
        };
        let n = (self.len.saturating_sub(pos)).min(65536) as usize;
        let mut out = vec![0u8; n];
        f.read_exact_at(&mut out, pos - mem)?;
        Ok(out)
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

    /// Feeds `input`; decoded data is appended to `out`. Returns how many bytes of `input`
    /// belong to the body: all of them, or those up to its end (the rest is the next message).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Malformed> {
        let mut used = 0;
        while used < input.len() && self.state != State::Done {
            let rest = &input[used..];
            match self.state {
                State::Size | State::DataEnd | State::Trailers => {
                    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(rest);
                        if self.line.len() > 4096 {
                            return Err(Malformed);
                        }
                        return Ok(input.len());
                    };
                    self.line.extend_from_slice(&rest[..nl]);
                    used += nl + 1;
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
                    let n = self.remaining.min(rest.len());
                    out.extend_from_slice(&rest[..n]);
                    used += n;
                    self.remaining -= n;
                    if self.remaining == 0 {
                        self.state = State::DataEnd;
                    }
                }
                State::Done => {}
            }
        }
        Ok(used)
    }
}

/// Why a request body could not be read: a status to answer with, or a broken connection.
#[derive(Debug)]
pub enum BodyError {
    /// 400 (bad chunked framing), 408 (`client_body_timeout`), 413 (`client_max_body_size`).
    Refused(u16),
    Io(std::io::Error),
}

impl From<std::io::Error> for BodyError {
    fn from(e: std::io::Error) -> Self {
        BodyError::Io(e)
    }
}

/// A request body read as it arrives, piece by piece, within nginx's limits. Bytes that
/// follow the body (a pipelined request) stay in the connection's buffer.
pub struct BodyReader {
    /// Sized body: bytes still to come.
    left: u64,
    chunked: Option<Decoder>,
    max: u64,
    seen: u64,
    timeout: std::time::Duration,
}

impl BodyReader {
    /// `max`: `client_max_body_size` (0: none); `timeout`: `client_body_timeout`.
    pub fn new(framing: Framing, max: u64, timeout: std::time::Duration) -> BodyReader {
        BodyReader {
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunked: (framing == Framing::Chunked).then(Decoder::default),
            max,
            seen: 0,
            timeout,
        }
    }

    pub fn is_chunked(&self) -> bool {
        self.chunked.is_some()
    }

    /// The next piece of the body; `None` at its end.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Vec<u8>>, BodyError> {
        loop {
            match &mut self.chunked {
                None => {
                    if self.left == 0 {
                        return Ok(None);
                    }
                    if !buf.is_empty() {
                        let n = (self.left.min(buf.len() as u64)) as usize;
                        self.left -= n as u64;
                        let rest = buf.split_off(n);
                        return Ok(Some(std::mem::replace(buf, rest)));
                    }
                }
                Some(decoder) => {
                    if decoder.done() {
                        return Ok(None);
                    }
                    if !buf.is_empty() {
                        let mut out = Vec::new();
                        let used = decoder
                            .feed(buf, &mut out)
                            .map_err(|Malformed| BodyError::Refused(400))?;
                        buf.drain(..used);
                        self.seen += out.len() as u64;
                        if self.max > 0 && self.seen > self.max {
                            return Err(BodyError::Refused(413));
                        }
                        if !out.is_empty() {
                            return Ok(Some(out));
                        }
                        continue;
                    }
                }
            }
            let mut chunk = vec![0u8; 65536];
            match tokio::time::timeout(self.timeout, io.read(&mut chunk)).await {
                Err(_) => return Err(BodyError::Refused(408)),
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(0)) => {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                }
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// A response body between the upstream and the client: read off the upstream as fast as it
/// comes, kept in memory up to a limit (`proxy_buffers`), then in an unlinked temp file up to
/// `proxy_max_temp_file_size`; the client side takes it from the front at its own pace. With
/// no file allowed, a full pipe stops the reading (the upstream waits: `proxy_buffering off`).
pub struct Pipe {
    mem: std::collections::VecDeque<Vec<u8>>,
    /// Bytes of the first piece already taken.
    front_off: usize,
    mem_len: usize,
    mem_limit: usize,
    dir: PathBuf,
    file: Option<std::fs::File>,
    file_read: u64,
    file_write: u64,
    max_file: u64,
}

impl Pipe {
    pub fn new(mem_limit: usize, dir: &Path, max_file: u64) -> Pipe {
        Pipe {
            mem: Default::default(),
            front_off: 0,
            mem_len: 0,
            mem_limit: mem_limit.max(1),
            dir: dir.to_path_buf(),
            file: None,
            file_read: 0,
            file_write: 0,
            max_file,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.mem_len == 0 && self.file_read == self.file_write
    }

    /// Whether more may be read from the upstream now.
    pub fn has_room(&self) -> bool {
        self.mem_len < self.mem_limit
            || (self.max_file > 0 && self.file_write - self.file_read < self.max_file)
    }

    /// Whether any of the body has gone through a temp file.
    #[cfg(test)]
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// Appends `data` after everything already held.
    pub fn push(&mut self, data: Vec<u8>) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if data.is_empty() {
            return Ok(());
        }
        let file_pending = self.file_read < self.file_write;
        if !file_pending && (self.mem_len < self.mem_limit || self.max_file == 0) {
            self.mem_len += data.len();
            self.mem.push_back(data);
            return Ok(());
        }
        if self.file.is_none() {
            match temp_file(&self.dir) {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    // Nowhere to spill: keep to memory and let the upstream wait.
                    tracing::error!(dir = %self.dir.display(), error = %e, "cannot create a temp file");
                    self.max_file = 0;
                    self.mem_len += data.len();
                    self.mem.push_back(data);
                    return Ok(());
                }
            }
        }
        let f = self.file.as_ref().expect("created above");
        f.write_all_at(&data, self.file_write)?;
        self.file_write += data.len() as u64;
        Ok(())
    }

    /// Makes the next bytes to send available to [`Pipe::front`], from the file if memory
    /// holds none.
    pub fn load(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if self.mem.is_empty() && self.file_read < self.file_write {
            let n = (self.file_write - self.file_read).min(65536) as usize;
            let mut chunk = vec![0u8; n];
            let f = self.file.as_ref().expect("pending bytes are in the file");
            f.read_exact_at(&mut chunk, self.file_read)?;
            self.file_read += n as u64;
            if self.file_read == self.file_write {
                self.file_read = 0;
                self.file_write = 0;
            }
            self.mem_len += n;
            self.mem.push_back(chunk);
        }
        Ok(())
    }

    /// The bytes to send next (after [`Pipe::load`]); empty when none are in memory.
    pub fn front(&self) -> &[u8] {
        self.mem.front().map_or(&[], |c| &c[self.front_off..])
    }

    /// Drops `n` bytes from the front once they are sent.
    pub fn consume(&mut self, n: usize) {
        self.front_off += n;
        self.mem_len -= n;
        if self.mem.front().is_some_and(|c| self.front_off >= c.len()) {
            self.mem.pop_front();
            self.front_off = 0;
        }
    }
}

/// A new temp file in `dir`, unlinked at once as nginx does: it goes away with its handle.
fn temp_file(dir: &Path) -> std::io::Result<std::fs::File> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!(
        "{:010}",
        SEQ.fetch_add(1, Ordering::Relaxed) + u64::from(std::process::id()) * 1_000_000
    ));
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let _ = std::fs::remove_file(&path);
    Ok(file)
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
            let a = d.feed(&raw[..split], &mut out).unwrap();
            let b = d.feed(&raw[split..], &mut out).unwrap();
            assert!(d.done());
            assert_eq!(out, b"abc0123456789abcdef");
            assert_eq!(a + b, raw.len() - b"rest".len(), "split at {split}");
        }
        assert!(Decoder::default().feed(b"zz\r\n", &mut Vec::new()).is_err());
    }

    #[test]
    fn spills_to_a_file_and_replays() {
        let dir = std::env::temp_dir().join("portico-spool-test");
        let mut s = Spool::new(10, &dir);
        s.write(b"0123456789").unwrap();
        assert!(!s.spilled());
        s.write(b"abcdef").unwrap();
        s.write(b"gh").unwrap();
        assert!(s.spilled());
        for _ in 0..2 {
            let mut all = Vec::new();
            loop {
                let p = s.piece(all.len() as u64).unwrap();
                if p.is_empty() {
                    break;
                }
                all.extend_from_slice(&p);
            }
            assert_eq!(all, b"0123456789abcdefgh");
        }
    }

    #[test]
    fn pipe_keeps_order_through_the_file() {
        let dir = std::env::temp_dir().join("portico-pipe-test");
        let mut p = Pipe::new(8, &dir, 1 << 20);
        let mut sent = Vec::new();
        let mut expected = Vec::new();
        for i in 0..200u32 {
            let piece = format!("<{i}>").into_bytes();
            expected.extend_from_slice(&piece);
            p.push(piece).unwrap();
            // Take a little now and then, as a slow client would.
            if i % 3 == 0 {
                p.load().unwrap();
                let n = p.front().len().min(2);
                sent.extend_from_slice(&p.front()[..n]);
                p.consume(n);
            }
        }
        assert!(p.spilled());
        while !p.is_empty() {
            p.load().unwrap();
            let f = p.front().to_vec();
            sent.extend_from_slice(&f);
            p.consume(f.len());
        }
        assert_eq!(sent, expected);
    }

    #[test]
    fn pipe_without_a_file_fills_up() {
        let mut p = Pipe::new(4, Path::new("/nonexistent"), 0);
        assert!(p.has_room());
        p.push(b"abcdef".to_vec()).unwrap();
        assert!(!p.has_room());
        assert!(!p.spilled());
    }
}
