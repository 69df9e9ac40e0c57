//! The wire format UDP tunnels share between the proxy and `portcullis tunnel`: RFC 9000
//! variable-length integers, RFC 9297 capsules (the HTTP/1.1 `Upgrade: connect-udp`
//! fallback carries datagrams on the stream) and HTTP/3 datagrams, and RFC 9298's
//! `/.well-known/masque/udp/{host}/{port}/` target. Pure: no I/O.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The capsule type of a DATAGRAM capsule (RFC 9297 section 3.5).
pub const DATAGRAM_CAPSULE: u64 = 0x00;

/// The context id of UDP payloads (RFC 9298 section 4): other contexts are extensions,
/// whose datagrams a proxy that knows none of them drops.
pub const UDP_CONTEXT: u64 = 0;

/// The largest value a variable-length integer holds.
pub const VARINT_MAX: u64 = (1 << 62) - 1;

/// The path prefix of a CONNECT-UDP request.
pub const UDP_PATH_PREFIX: &str = "/.well-known/masque/udp/";

/// The largest UDP payload: an IPv4 datagram's 65,535 bytes less its IP and UDP headers.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// The largest capsule accepted on a stream: one UDP payload with its context id. A
/// longer one ends the tunnel (it cannot be a UDP payload, and buffering it would let a
/// client hold memory).
pub const MAX_CAPSULE: u64 = MAX_UDP_PAYLOAD as u64 + 8;

/// Appends `v` (at most [`VARINT_MAX`]) in the shortest encoding.
pub fn put_varint(buf: &mut impl BufMut, v: u64) {
    debug_assert!(v <= VARINT_MAX);
    if v < 1 << 6 {
        buf.put_u8(v as u8);
    } else if v < 1 << 14 {
        buf.put_u16(0x4000 | v as u16);
    } else if v < 1 << 30 {
        buf.put_u32(0x8000_0000 | v as u32);
    } else {
        buf.put_u64(0xc000_0000_0000_0000 | v);
    }
}

/// Reads a variable-length integer from the front of `buf`: `None` if it is incomplete
/// (nothing is consumed then).
pub fn get_varint(buf: &mut impl Buf) -> Option<u64> {
    let first = *buf.chunk().first()?;
    let len = 1usize << (first >> 6);
    if buf.remaining() < len {
        return None;
    }
    let v = match len {
        1 => u64::from(buf.get_u8() & 0x3f),
        2 => u64::from(buf.get_u16() & 0x3fff),
        4 => u64::from(buf.get_u32() & 0x3fff_ffff),
        _ => buf.get_u64() & 0x3fff_ffff_ffff_ffff,
    };
    Some(v)
}

/// A capsule that cannot be read: the stream carrying it is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapsuleError {
    /// Longer than [`MAX_CAPSULE`].
    #[error("a capsule of {0} bytes is longer than any UDP payload")]
    TooLong(u64),
}

/// One capsule read from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capsule {
    /// Its type.
    pub kind: u64,
    /// Its value.
    pub value: Bytes,
}

/// Takes the first whole capsule off `buf`: `Ok(None)` when more bytes are needed.
pub fn take_capsule(buf: &mut BytesMut) -> Result<Option<Capsule>, CapsuleError> {
    let mut peek = &buf[..];
    let Some(kind) = get_varint(&mut peek) else { return Ok(None) };
    let Some(len) = get_varint(&mut peek) else { return Ok(None) };
    if len > MAX_CAPSULE {
        return Err(CapsuleError::TooLong(len));
    }
    let head = buf.len() - peek.len();
    let len = len as usize;
    if peek.len() < len {
        return Ok(None);
    }
    buf.advance(head);
    Ok(Some(Capsule { kind, value: buf.split_to(len).freeze() }))
}

/// A DATAGRAM capsule carrying a UDP payload.
pub fn udp_capsule(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    put_varint(&mut out, DATAGRAM_CAPSULE);
    put_varint(&mut out, payload.len() as u64 + 1);
    put_varint(&mut out, UDP_CONTEXT);
    out.put_slice(payload);
    out.freeze()
}

/// The UDP payload of a datagram's value (a DATAGRAM capsule's, or an HTTP/3 datagram's
/// after its quarter stream id): `None` for another context, which is dropped.
pub fn udp_payload(mut value: Bytes) -> Option<Bytes> {
    match get_varint(&mut value)? {
        UDP_CONTEXT => Some(value),
        _ => None,
    }
}

/// An HTTP/3 datagram (RFC 9297 section 2.1) for the request stream `stream_id` carrying a
/// UDP payload.
pub fn h3_datagram(stream_id: u64, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 9);
    put_varint(&mut out, stream_id / 4);
    put_varint(&mut out, UDP_CONTEXT);
    out.put_slice(payload);
    out.freeze()
}

/// Splits an HTTP/3 datagram into its request stream id and value: `None` if malformed.
pub fn split_h3_datagram(mut datagram: Bytes) -> Option<(u64, Bytes)> {
    let quarter = get_varint(&mut datagram)?;
    Some((quarter.checked_mul(4)?, datagram))
}

/// The target of a CONNECT-UDP request path, `/.well-known/masque/udp/{host}/{port}/`:
/// the host lower-cased and without IPv6 brackets or percent-encoding (`%3A` in an IPv6
/// literal). `None` if the path is anything else.
pub fn parse_udp_path(path: &str) -> Option<(String, u16)> {
    let rest = path.strip_prefix(UDP_PATH_PREFIX)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest.split_once('/')?;
    if host.is_empty() || port.contains('/') {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = percent_decode(host)?.to_ascii_lowercase();
    if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    Some((host, port))
}

/// The path of a CONNECT-UDP request for `host:port` (an IPv6 literal's colons encoded).
pub fn udp_path(host: &str, port: u16) -> String {
    let host = host.trim_start_matches('[').trim_end_matches(']').replace(':', "%3A");
    format!("{UDP_PATH_PREFIX}{host}/{port}/")
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_length() {
        for v in [0, 63, 64, 16_383, 16_384, (1 << 30) - 1, 1 << 30, VARINT_MAX] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            let expected_len = match v {
                0..=63 => 1,
                64..=16_383 => 2,
                16_384..=1_073_741_823 => 4,
                _ => 8,
            };
            assert_eq!(b.len(), expected_len, "{v}");
            let mut r = b.freeze();
            assert_eq!(get_varint(&mut r), Some(v));
            assert!(r.is_empty());
        }
        // RFC 9000 appendix A.1's examples.
        assert_eq!(get_varint(&mut &[0x9d, 0x7f, 0x3e, 0x7d][..]), Some(494_878_333));
        assert_eq!(get_varint(&mut &[0x7b, 0xbd][..]), Some(15_293));
        assert_eq!(get_varint(&mut &[0x40][..]), None, "incomplete");
    }

    #[test]
    fn capsules_are_taken_whole_and_only_whole() {
        let capsule = udp_capsule(b"hello");
        let mut buf = BytesMut::new();
        for (i, b) in capsule.iter().enumerate() {
            assert_eq!(take_capsule(&mut buf).unwrap(), None, "after {i} bytes");
            buf.put_u8(*b);
        }
        buf.put_slice(&udp_capsule(b"second"));
        let first = take_capsule(&mut buf).unwrap().unwrap();
        assert_eq!(first.kind, DATAGRAM_CAPSULE);
        assert_eq!(udp_payload(first.value), Some(Bytes::from_static(b"hello")));
        let second = take_capsule(&mut buf).unwrap().unwrap();
        assert_eq!(udp_payload(second.value), Some(Bytes::from_static(b"second")));
        assert!(buf.is_empty());
    }

    #[test]
    fn an_oversized_capsule_is_an_error_before_it_is_buffered() {
        let mut buf = BytesMut::new();
        put_varint(&mut buf, DATAGRAM_CAPSULE);
        put_varint(&mut buf, 1 << 40);
        assert_eq!(take_capsule(&mut buf), Err(CapsuleError::TooLong(1 << 40)));
    }

    #[test]
    fn other_contexts_are_not_udp() {
        let mut v = BytesMut::new();
        put_varint(&mut v, 2);
        v.put_slice(b"x");
        assert_eq!(udp_payload(v.freeze()), None);
        assert_eq!(udp_payload(Bytes::new()), None);
    }

    #[test]
    fn h3_datagrams_name_their_stream() {
        let d = h3_datagram(8, b"dns");
        let (id, value) = split_h3_datagram(d).unwrap();
        assert_eq!(id, 8);
        assert_eq!(udp_payload(value), Some(Bytes::from_static(b"dns")));
    }

    #[test]
    fn udp_paths_parse_and_print() {
        assert_eq!(parse_udp_path("/.well-known/masque/udp/DNS.example.com/53/"), Some(("dns.example.com".into(), 53)));
        assert_eq!(parse_udp_path("/.well-known/masque/udp/192.0.2.6/443"), Some(("192.0.2.6".into(), 443)));
        assert_eq!(parse_udp_path("/.well-known/masque/udp/2001%3Adb8%3A%3A42/53/"), Some(("2001:db8::42".into(), 53)));
        for bad in [
            "/.well-known/masque/udp/host/0/",
            "/.well-known/masque/udp/host/99999/",
            "/.well-known/masque/udp//53/",
            "/.well-known/masque/udp/host/",
            "/.well-known/masque/udp/a/b/53/",
            "/.well-known/masque/udp/a%2/53/",
            "/.well-known/masque/tcp/host/53/",
            "/other",
        ] {
            assert_eq!(parse_udp_path(bad), None, "{bad}");
        }
        assert_eq!(udp_path("dns.example.com", 53), "/.well-known/masque/udp/dns.example.com/53/");
        assert_eq!(udp_path("[2001:db8::42]", 53), "/.well-known/masque/udp/2001%3Adb8%3A%3A42/53/");
        assert_eq!(parse_udp_path(&udp_path("[::1]", 5353)), Some(("::1".into(), 5353)));
    }
}
