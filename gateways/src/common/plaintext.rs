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

/// Whether a client dialling `url` would speak plain text to another machine: the URL is
/// not `https` (in any letter case, as the URI parser reads it) and its host is not
/// loopback. A URL that does not parse counts as remote plain text: the connection fails
/// on it anyway, and a check must not pass what it cannot read.
pub fn is_plaintext_to_remote(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else { return true };
    if uri.scheme_str().is_some_and(|scheme| scheme.eq_ignore_ascii_case("https")) {
        return false;
    }
    !uri.host().is_some_and(is_loopback_host)
}

/// A server about to serve plain text on `addr`.
pub fn check_listen(addr: SocketAddr, tls: bool, insecure_plaintext: bool, what: &str) -> anyhow::Result<()> {
    if tls || insecure_plaintext || addr.ip().is_loopback() {
        return Ok(());
    }
    bail!("refusing to serve {what} in plain text on {addr}, which is not loopback: configure TLS, listen on 127.0.0.1, or pass --insecure-plaintext")
}

/// A client about to send its credential to `url`.
/// Several URLs comma-separated (`--connect A,B`) are each checked.
pub fn check_url(urls: &str, insecure_plaintext: bool) -> anyhow::Result<()> {
    let Some(url) = urls.split(',').map(str::trim).find(|url| !insecure_plaintext && is_plaintext_to_remote(url)) else { return Ok(()) };
    bail!("refusing to send a credential in plain text to {url}, which is not loopback: use https:// (with --ca), or pass --insecure-plaintext")
}

/// A player about to send an access grant and a receipt proof to the delivery node at
/// `endpoint` (the node the engine named in the sale, so untrusted text: quoted escaped).
/// `tls_asked`: the player named a CA for nodes (`--node-ca`), so a plain-text node is
/// refused even on loopback rather than silently used without TLS.
pub fn check_node_url(endpoint: &str, tls_asked: bool, insecure_plaintext: bool) -> anyhow::Result<()> {
    let https = endpoint.parse::<http::Uri>().is_ok_and(|uri| uri.scheme_str().is_some_and(|scheme| scheme.eq_ignore_ascii_case("https")));
    if tls_asked && !https {
        bail!("--node-ca asks for TLS, but the delivery node at {endpoint:?} serves plain text; leave out --node-ca to use it on loopback")
    }
    if insecure_plaintext || !is_plaintext_to_remote(endpoint) {
        return Ok(());
    }
    bail!(
        "refusing to send an access grant in plain text to the delivery node at {endpoint:?}, which is not loopback: the node should serve TLS (node --tls-cert), or pass --insecure-plaintext"
    )
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
        // The scheme's letter case does not slip plain text past the check; a URL the
        // check cannot read is refused too.
        for odd in ["HTTP://10.1.2.3:50051", "Http://engine.example", "10.1.2.3:50051", "http://10.1.2.3:50051 trailing"] {
            assert!(is_plaintext_to_remote(odd), "{odd}");
            assert!(check_url(odd, false).is_err(), "{odd}");
        }
        assert!(!is_plaintext_to_remote("HTTPS://engine.example:50051"));
    }

    /// The player's side: plain text to a remote node needs the flag; TLS asked for with
    /// --node-ca refuses a plain-text node even on loopback (no silent downgrade by a sale
    /// that names an http:// node). Controls: https with or without the CA, loopback plain
    /// text without --node-ca, and the flag.
    #[test]
    fn a_player_sends_a_grant_in_plain_text_only_to_loopback_unless_asked() {
        for remote in ["http://10.1.2.3:50052", "http://node.example:50052", "HTTP://192.168.1.5:50052", "http://0.0.0.0:9"] {
            let refused = check_node_url(remote, false, false).expect_err(remote).to_string();
            assert!(refused.contains("--insecure-plaintext") && refused.contains("--tls-cert"), "{refused}");
            check_node_url(remote, false, true).expect("asked for");
        }
        let downgrade = check_node_url("http://127.0.0.1:50052", true, false).expect_err("TLS asked for").to_string();
        assert!(downgrade.contains("--node-ca"), "{downgrade}");
        assert!(check_node_url("http://10.1.2.3:50052", true, true).is_err(), "the flag does not turn a TLS request into plain text");
        check_node_url("http://127.0.0.1:50052", false, false).expect("loopback");
        check_node_url("https://node.example:50052", true, false).expect("TLS with the CA");
        check_node_url("https://node.example:50052", false, false).expect("TLS (the handshake decides)");
        let escaped = check_node_url("http://10.1.2.3:1/\x1b[2K", false, false).expect_err("remote").to_string();
        assert!(!escaped.contains('\u{1b}'), "{escaped}");
    }
}
