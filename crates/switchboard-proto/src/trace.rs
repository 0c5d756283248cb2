//! The envelope's `trace`: a W3C Trace Context `traceparent`, checked as the
//! specification says (an invalid one is ignored, never an error).

/// True for a W3C `traceparent`: `00-` 32 hex digits `-` 16 hex digits `-` 2 hex digits,
/// lowercase, with neither id all zeros (version `ff` is invalid).
///
/// ```
/// use switchboard_proto::is_traceparent;
/// assert!(is_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
/// assert!(!is_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
/// assert!(!is_traceparent("not a trace"));
/// ```
pub fn is_traceparent(t: &str) -> bool {
    let b = t.as_bytes();
    let hex = |s: &[u8]| {
        s.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let zeros = |s: &[u8]| s.iter().all(|&c| c == b'0');
    b.len() == 55
        && b[2] == b'-'
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(&b[..2])
        && &b[..2] != b"ff"
        && hex(&b[3..35])
        && !zeros(&b[3..35])
        && hex(&b[36..52])
        && !zeros(&b[36..52])
        && hex(&b[53..])
}
