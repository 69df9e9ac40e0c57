//! The minimal HTTP/1.1 client the `hold` and `handshake` modes need: one GET, and a response
//! read exactly to its `Content-Length`.

use anyhow::{bail, Context};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest response head accepted; the benchmark's responses have a few hundred bytes.
const MAX_HEAD: usize = 64 * 1024;

/// The request bytes, built once per run. `keep_alive` false sends `Connection: close`.
pub fn request(path: &str, host: &str, keep_alive: bool) -> Vec<u8> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: portcullis-loadgen\r\nAccept: */*\r\nConnection: {connection}\r\n\r\n"
    )
    .into_bytes()
}

/// A parsed response head.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the head, including the blank line that ends it.
    pub len: usize,
    pub content_length: u64,
}

/// Parses the response head at the start of `buf`: `Ok(None)` while it is incomplete. Only
/// `Content-Length` framing is accepted; chunked or unframed (read-to-close) bodies are errors,
/// because `hold` must know where a response ends without closing the connection.
pub fn parse_head(buf: &[u8]) -> anyhow::Result<Option<Head>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            bail!("response head longer than {MAX_HEAD} bytes");
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split(' ').nth(1))
        .filter(|code| code.len() == 3)
        .and_then(|code| code.parse::<u16>().ok())
        .with_context(|| format!("not an HTTP/1.x status line: {status_line:?}"))?;
    let mut content_length = None;
    for line in lines {
        let (name, value) = line.split_once(':').with_context(|| format!("malformed header line {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("response has Transfer-Encoding: {value} (only Content-Length bodies are supported)");
        }
        if name.eq_ignore_ascii_case("content-length") {
            let n = value.parse::<u64>().with_context(|| format!("bad Content-Length {value:?}"))?;
            if content_length.is_some_and(|m| m != n) {
                bail!("conflicting Content-Length headers");
            }
            content_length = Some(n);
        }
    }
    if (100..200).contains(&status) {
        bail!("interim response {status} (not expected for a GET)");
    }
    let content_length = match (status, content_length) {
        (204 | 304, _) => 0,
        (_, Some(n)) => n,
        (_, None) => bail!("response {status} has no Content-Length"),
    };
    Ok(Some(Head { status, len: end + 4, content_length }))
}

/// Sends `request` and reads its whole response; see [`read_response`].
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, request: &[u8]) -> anyhow::Result<u16> {
    stream.write_all(request).await.context("sending the request")?;
    // A TLS stream may hold the request's record until flushed.
    stream.flush().await.context("sending the request")?;
    read_response(stream).await
}

/// Reads one whole response (head and `Content-Length` body) and checks that its status is
/// 2xx and that nothing follows it. The buffer is local: after the response nothing of it is
/// kept, so a held connection costs the client only its socket (and TLS state).
pub async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> anyhow::Result<u16> {
    let mut chunk = [0u8; 4096];
    let mut buf = Vec::new();
    let head = loop {
        let n = stream.read(&mut chunk).await.context("reading the response")?;
        if n == 0 {
            bail!("connection closed before the response head was complete ({} bytes)", buf.len());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = parse_head(&buf)? {
            break head;
        }
    };
    let mut left = head.content_length;
    let extra = (buf.len() - head.len) as u64;
    if extra > left {
        bail!("{} bytes after the {}-byte body", extra - left, head.content_length);
    }
    left -= extra;
    drop(buf);
    while left > 0 {
        let n = stream.read(&mut chunk).await.context("reading the response body")? as u64;
        if n == 0 {
            bail!("connection closed with {left} bytes of the body missing");
        }
        if n > left {
            bail!("{} bytes after the {}-byte body", n - left, head.content_length);
        }
        left -= n;
    }
    if !(200..300).contains(&head.status) {
        bail!("status {}", head.status);
    }
    Ok(head.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 11\r\n\r\nstatus 200\n";

    #[test]
    fn head_complete_and_incomplete() {
        assert_eq!(parse_head(OK).unwrap(), Some(Head { status: 200, len: OK.len() - 11, content_length: 11 }));
        assert_eq!(parse_head(&OK[..20]).unwrap(), None);
        assert_eq!(parse_head(b"").unwrap(), None);
        let upper = b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_head(upper).unwrap(), Some(Head { status: 404, len: upper.len(), content_length: 0 }));
        let no_body = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(parse_head(no_body).unwrap().unwrap().content_length, 0);
    }

    #[test]
    fn head_errors() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(format!("{:#}", parse_head(chunked).unwrap_err()).contains("Transfer-Encoding"));
        let unframed = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
        assert!(format!("{:#}", parse_head(unframed).unwrap_err()).contains("no Content-Length"));
        let conflicting = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert!(parse_head(conflicting).is_err());
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n").is_err());
        assert!(parse_head(&vec![b'x'; MAX_HEAD + 1]).is_err());
    }

    #[tokio::test]
    async fn reads_whole_responses() {
        let mut r = OK;
        assert_eq!(read_response(&mut r).await.unwrap(), 200);
        assert!(r.is_empty());
        // Split across reads, in the head and in the body.
        let mut r = (&OK[..10]).chain(&OK[10..OK.len() - 3]).chain(&OK[OK.len() - 3..]);
        assert_eq!(read_response(&mut r).await.unwrap(), 200);
        // Extra bytes after the body (a keep-alive connection must not have any).
        let mut r = &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc"[..];
        assert!(read_response(&mut r).await.is_err());
        // Truncated body.
        let mut r = &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"[..];
        assert!(format!("{:#}", read_response(&mut r).await.unwrap_err()).contains("3 bytes of the body missing"));
        // Not 2xx.
        let mut r = &b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"[..];
        assert!(format!("{:#}", read_response(&mut r).await.unwrap_err()).contains("status 502"));
    }
}
