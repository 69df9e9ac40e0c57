//! A small raw HTTP/2 client: frames written and read by hand (RFC 9113), an HPACK encoder
//! that only emits literals without indexing (no Huffman) plus the two encodings the HPACK
//! bomb needs, and a decoder that only understands `:status`.
#![allow(dead_code)]

use std::io;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One frame as read from the wire.
#[derive(Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.kind {
            DATA => "DATA",
            HEADERS => "HEADERS",
            RST_STREAM => "RST_STREAM",
            SETTINGS => "SETTINGS",
            PING => "PING",
            GOAWAY => "GOAWAY",
            WINDOW_UPDATE => "WINDOW_UPDATE",
            CONTINUATION => "CONTINUATION",
            _ => "OTHER",
        };
        write!(f, "{name}(stream {}, flags {:#x}, {} bytes", self.stream, self.flags, self.payload.len())?;
        if let Some((last, code)) = self.goaway() {
            write!(f, ", last {last}, code {code:#x}")?;
        }
        if let Some(code) = self.rst_code() {
            write!(f, ", code {code:#x}")?;
        }
        write!(f, ")")
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Frame {
    /// GOAWAY's last stream id and error code.
    pub fn goaway(&self) -> Option<(u32, u32)> {
        (self.kind == GOAWAY && self.payload.len() >= 8)
            .then(|| (be32(&self.payload[0..4]) & 0x7fff_ffff, be32(&self.payload[4..8])))
    }

    /// RST_STREAM's error code.
    pub fn rst_code(&self) -> Option<u32> {
        (self.kind == RST_STREAM && self.payload.len() == 4).then(|| be32(&self.payload))
    }

    /// `:status` of a HEADERS frame (see [`status_of`]).
    pub fn status(&self) -> Option<u16> {
        if self.kind != HEADERS {
            return None;
        }
        let mut block = &self.payload[..];
        if self.flags & 0x8 != 0 {
            // PADDED
            let pad = usize::from(*block.first()?);
            block = block.get(1..block.len().checked_sub(pad)?)?;
        }
        if self.flags & 0x20 != 0 {
            // PRIORITY
            block = block.get(5..)?;
        }
        status_of(block)
    }
}

/// A frame's bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    assert!(len < (1 << 24));
    let mut out = Vec::with_capacity(9 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn settings(values: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in values {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

pub fn settings_ack() -> Vec<u8> {
    frame(SETTINGS, ACK, 0, &[])
}

pub fn headers(stream: u32, block: &[u8], end_stream: bool, end_headers: bool) -> Vec<u8> {
    let flags = if end_stream { END_STREAM } else { 0 } | if end_headers { END_HEADERS } else { 0 };
    frame(HEADERS, flags, stream, block)
}

pub fn continuation(stream: u32, block: &[u8], end_headers: bool) -> Vec<u8> {
    frame(CONTINUATION, if end_headers { END_HEADERS } else { 0 }, stream, block)
}

pub fn data(stream: u32, bytes: &[u8], end_stream: bool) -> Vec<u8> {
    frame(DATA, if end_stream { END_STREAM } else { 0 }, stream, bytes)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn ping(payload: [u8; 8], ack: bool) -> Vec<u8> {
    frame(PING, if ack { ACK } else { 0 }, 0, &payload)
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

pub fn goaway(last: u32, code: u32) -> Vec<u8> {
    let mut p = last.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    frame(GOAWAY, 0, 0, &p)
}

/// HPACK (RFC 7541) encoding, the few representations the tests need.
pub mod hpack {
    /// An integer with an N-bit prefix; `first` holds the representation's flag bits.
    pub fn int(out: &mut Vec<u8>, prefix_bits: u8, first: u8, mut value: usize) {
        let max = (1usize << prefix_bits) - 1;
        if value < max {
            out.push(first | value as u8);
            return;
        }
        out.push(first | max as u8);
        value -= max;
        while value >= 128 {
            out.push((value % 128) as u8 | 0x80);
            value /= 128;
        }
        out.push(value as u8);
    }

    fn string(out: &mut Vec<u8>, s: &[u8]) {
        int(out, 7, 0, s.len()); // H = 0: no Huffman
        out.extend_from_slice(s);
    }

    /// Literal header field without indexing, new name (RFC 7541 section 6.2.2).
    pub fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        out.push(0x00);
        string(out, name);
        string(out, value);
    }

    /// Literal header field with incremental indexing, new name (section 6.2.1): the entry
    /// goes into the decoder's dynamic table at index 62.
    pub fn literal_indexed(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        out.push(0x40);
        string(out, name);
        string(out, value);
    }

    /// Indexed header field (section 6.1).
    pub fn indexed(out: &mut Vec<u8>, index: usize) {
        int(out, 7, 0x80, index);
    }
}

/// A request header block: the pseudo-headers given (in order) and then `extra`.
pub fn block(pseudo: &[(&str, &str)], extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in pseudo.iter().chain(extra) {
        hpack::literal(&mut out, n.as_bytes(), v.as_bytes());
    }
    out
}

/// `GET https://{authority}{path}`.
pub fn get_block(authority: &str, path: &str) -> Vec<u8> {
    block(&[(":method", "GET"), (":scheme", "https"), (":authority", authority), (":path", path)], &[])
}

fn read_int(b: &[u8], prefix_bits: u8) -> Option<(usize, usize)> {
    let max = (1usize << prefix_bits) - 1;
    let mut v = usize::from(*b.first()?) & max;
    if v < max {
        return Some((v, 1));
    }
    let mut shift = 0;
    for (i, byte) in b.iter().enumerate().skip(1) {
        v += usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
        if shift > 28 {
            return None;
        }
    }
    None
}

/// `:status` from the first field of a response header block, where servers put it: an
/// indexed static entry (200, 204, 206, 304, 400, 404, 500) or a literal whose name is static
/// index 8 and whose value is not Huffman coded. Anything else: `None`.
pub fn status_of(block: &[u8]) -> Option<u16> {
    let mut b = block;
    // Skip dynamic table size updates.
    while b.first().is_some_and(|x| x & 0xe0 == 0x20) {
        let (_, n) = read_int(b, 5)?;
        b = &b[n..];
    }
    let first = *b.first()?;
    if first & 0x80 != 0 {
        let (idx, _) = read_int(b, 7)?;
        return [200, 204, 206, 304, 400, 404, 500].get(idx.checked_sub(8)?).copied();
    }
    let prefix = if first & 0x40 != 0 { 6 } else { 4 };
    let (name_idx, n) = read_int(b, prefix)?;
    if !(8..=14).contains(&name_idx) {
        return None;
    }
    let rest = &b[n..];
    if rest.first()? & 0x80 != 0 {
        return None; // Huffman
    }
    let (len, n) = read_int(rest, 7)?;
    std::str::from_utf8(rest.get(n..n + len)?).ok()?.parse().ok()
}

/// Reads one frame; `Ok(None)` at a clean EOF between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 9];
    let mut got = 0;
    while got < 9 {
        let n = r.read(&mut head[got..]).await?;
        if n == 0 {
            return if got == 0 { Ok(None) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
        }
        got += n;
    }
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some(Frame { kind: head[3], flags: head[4], stream: be32(&head[5..9]) & 0x7fff_ffff, payload }))
}

/// What the reader task saw.
#[derive(Debug)]
pub enum Event {
    Frame(Frame),
    /// The connection ended: `Ok` for EOF, `Err` for a reset or a broken TLS record.
    Closed(Result<(), String>),
}

/// A raw HTTP/2 connection: the write half here, every frame read by a task.
pub struct Raw<S> {
    pub w: WriteHalf<S>,
    pub events: mpsc::UnboundedReceiver<Event>,
    /// Every frame seen so far, in order.
    pub seen: Vec<Frame>,
    /// When the reader saw EOF or an error.
    pub closed: Option<(Instant, Result<(), String>)>,
}

/// Spawns the reader task over `r`.
pub fn spawn_reader<S>(mut r: ReadHalf<S>) -> mpsc::UnboundedReceiver<Event>
where
    S: AsyncRead + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match read_frame(&mut r).await {
                Ok(Some(f)) => {
                    if tx.send(Event::Frame(f)).is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    let _ = tx.send(Event::Closed(Ok(())));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Event::Closed(Err(e.to_string())));
                    return;
                }
            }
        }
    });
    rx
}

impl<S> Raw<S>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    /// Splits `io`, starts the reader, and does nothing else.
    pub fn new(io: S) -> Self {
        let (r, w) = tokio::io::split(io);
        Self { w, events: spawn_reader(r), seen: Vec::new(), closed: None }
    }

    /// Sends the preface and `settings`, then waits (up to 5 s) for the server's SETTINGS
    /// and acknowledges them.
    pub async fn handshake(io: S, values: &[(u16, u32)]) -> Self {
        let mut c = Self::new(io);
        let mut hello = PREFACE.to_vec();
        hello.extend(settings(values));
        c.send(&hello).await.expect("write preface");
        let f = c.wait_for(Duration::from_secs(5), |f| f.kind == SETTINGS && f.flags & ACK == 0).await;
        assert!(f.is_some(), "no SETTINGS from the server: {:?} {:?}", c.seen, c.closed);
        c.send(&settings_ack()).await.expect("write SETTINGS ACK");
        c
    }

    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes).await?;
        self.w.flush().await
    }

    fn take(&mut self, e: Event) -> Option<Frame> {
        match e {
            Event::Frame(f) => {
                self.seen.push(f.clone());
                Some(f)
            }
            Event::Closed(r) => {
                self.closed.get_or_insert((Instant::now(), r));
                None
            }
        }
    }

    /// Takes what the reader has queued without waiting.
    pub fn drain(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            self.take(e);
        }
    }

    /// Waits for a frame matching `pred` (it is also kept in `seen`); `None` when the
    /// connection ended or `limit` passed first.
    pub async fn wait_for(&mut self, limit: Duration, mut pred: impl FnMut(&Frame) -> bool) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + limit;
        while self.closed.is_none() {
            let Ok(Some(e)) = tokio::time::timeout_at(deadline, self.events.recv()).await else { return None };
            if let Some(f) = self.take(e) {
                if pred(&f) {
                    return Some(f);
                }
            }
        }
        None
    }

    /// Reads until the connection ends; when it did within `limit`, the instant it did.
    pub async fn wait_closed(&mut self, limit: Duration) -> Option<Instant> {
        let _ = self.wait_for(limit, |_| false).await;
        self.closed.as_ref().map(|(t, _)| *t)
    }

    /// The first GOAWAY seen, if any.
    pub fn goaway(&self) -> Option<(u32, u32)> {
        self.seen.iter().find_map(Frame::goaway)
    }
}
