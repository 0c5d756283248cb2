//! The client's address behind a reverse proxy: taken from `Forwarded` (RFC 7239) or
//! `X-Forwarded-For` only when the connection comes from a proxy the server trusts, so a
//! client cannot claim another address by sending the header itself.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, header};

/// The address to treat as the client's: the peer's, or, when the peer is a trusted
/// proxy, the last address in the forwarding chain that is not itself a trusted proxy.
pub(crate) fn client_addr(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> SocketAddr {
    if !trusted.contains(&peer.ip()) {
        return peer;
    }
    let chain = forwarded_for(headers);
    chain
        .iter()
        .rev()
        .find(|ip| !trusted.contains(ip))
        .or_else(|| chain.first())
        .map_or(peer, |ip| SocketAddr::new(*ip, 0))
}

/// The `for=` addresses of `Forwarded`, or else the addresses of `X-Forwarded-For`, in
/// order (client first); entries that are not addresses are skipped.
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let forwarded: Vec<IpAddr> = headers
        .get_all(header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|part| {
            let (key, value) = part.trim().split_once('=')?;
            key.eq_ignore_ascii_case("for").then(|| parse_node(value))?
        })
        .collect();
    if !forwarded.is_empty() {
        return forwarded;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(parse_node)
        .collect()
}

/// `192.0.2.1`, `"[2001:db8::1]:4711"`, `192.0.2.1:80`.
fn parse_node(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    text.strip_prefix('[')
        .and_then(|rest| rest.split(']').next())
        .and_then(|ip| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 5555)
    }

    #[test]
    fn only_a_trusted_proxy_may_name_the_client() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(
            client_addr(peer("10.0.0.1"), &h, &[proxy]).ip().to_string(),
            "203.0.113.7"
        );
        assert_eq!(
            client_addr(peer("10.0.0.9"), &h, &[proxy]),
            peer("10.0.0.9"),
            "not a proxy"
        );
        assert_eq!(
            client_addr(peer("10.0.0.1"), &h, &[]),
            peer("10.0.0.1"),
            "none trusted"
        );
    }

    #[test]
    fn a_forged_first_entry_does_not_win_over_what_the_proxy_saw() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        // The client sent "1.2.3.4" itself; the proxy appended the real address.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.2")]);
        assert_eq!(
            client_addr(peer("10.0.0.1"), &h, &[proxy]).ip().to_string(),
            "198.51.100.2"
        );
    }

    #[test]
    fn forwarded_is_read_first_in_its_forms() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let h = headers(&[
            ("forwarded", r#"for="[2001:db8:cafe::17]:4711";proto=https"#),
            ("x-forwarded-for", "9.9.9.9"),
        ]);
        assert_eq!(
            client_addr(peer("10.0.0.1"), &h, &[proxy]).ip().to_string(),
            "2001:db8:cafe::17"
        );
        let h = headers(&[("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43")]);
        assert_eq!(
            client_addr(peer("10.0.0.1"), &h, &[proxy]).ip().to_string(),
            "192.0.2.60"
        );
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(
            client_addr(peer("10.0.0.1"), &h, &[proxy]),
            peer("10.0.0.1")
        );
    }
}
