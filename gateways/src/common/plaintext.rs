//! Plain text only where nobody else can listen: a server without TLS binds loopback, and a
//! client sends credentials over `http://` only to a loopback host, unless the operator
//! says `--insecure-plaintext` (a private network of their own, TLS terminated in front).
//! Loopback stays easy for the demo and the tests.

use anyhow::bail;
use std::net::{IpAddr, SocketAddr};

/// Whether `host` (an IP address or a name) is this machine.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// A server about to serve plain text on `addr`.
pub fn check_listen(addr: SocketAddr, tls: bool, insecure_plaintext: bool, what: &str) -> anyhow::Result<()> {
    if tls || insecure_plaintext || addr.ip().is_loopback() {
        return Ok(());
    }
    bail!("refusing to serve {what} in plain text on {addr}, which is not loopback: configure TLS, listen on 127.0.0.1, or pass --insecure-plaintext")
}

/// A client about to send its credential to `url`.
pub fn check_url(url: &str, insecure_plaintext: bool) -> anyhow::Result<()> {
    let Some(rest) = url.strip_prefix("http://") else { return Ok(()) };
    let authority = rest.split('/').next().unwrap_or_default();
    // host:port, [v6]:port, or a bare host.
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    };
    if insecure_plaintext || is_loopback_host(host) {
        return Ok(());
    }
    bail!("refusing to send a credential in plain text to {url}, which is not loopback: use https:// (with --ca), or pass --insecure-plaintext")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attack: `serve` on a public address without TLS and clients sending credentials
    /// over http:// to a remote host. Controls: loopback, TLS, https and the explicit flag
    /// are allowed.
    #[test]
    fn plain_text_off_loopback_needs_the_explicit_flag() {
        let public: SocketAddr = "0.0.0.0:50051".parse().expect("addr");
        let private: SocketAddr = "10.1.2.3:50051".parse().expect("addr");
        assert!(check_listen(public, false, false, "gRPC").is_err());
        assert!(check_listen(private, false, false, "gRPC").is_err());
        let refused = check_listen(public, false, false, "gRPC").expect_err("refused").to_string();
        assert!(refused.contains("--insecure-plaintext"), "{refused}");
        assert!(check_listen("127.0.0.1:50051".parse().expect("addr"), false, false, "gRPC").is_ok());
        assert!(check_listen("[::1]:50051".parse().expect("addr"), false, false, "gRPC").is_ok());
        assert!(check_listen(public, true, false, "gRPC").is_ok());
        assert!(check_listen(public, false, true, "gRPC").is_ok());

        for remote in ["http://10.1.2.3:50051", "http://engine.example:50051", "http://[2001:db8::1]:50051", "http://192.168.1.5"] {
            assert!(check_url(remote, false).is_err(), "{remote}");
            assert!(check_url(remote, true).is_ok(), "{remote} with the flag");
        }
        for fine in ["http://127.0.0.1:50051", "http://localhost:50051", "http://[::1]:50051", "https://engine.example:50051"] {
            assert!(check_url(fine, false).is_ok(), "{fine}");
        }
    }
}
