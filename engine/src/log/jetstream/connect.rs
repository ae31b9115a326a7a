//! Connecting to NATS and getting the streams right: the client's options, credentials
//! taken from the URL, the server checks (JetStream on, version), and creating or verifying
//! the streams against the settings vouchsafe requires (`weaker_settings`).
//!
//! What does not live here: anything sent on the streams once they exist (`append`,
//! `read`, `follow`, `node_feed`), and the server's own configuration (deploy/).
//!
//! Choices worth knowing (PITFALLS.md, NATS section):
//! - A stream's `max_msg_size` counts headers as well as the payload (tested on 2.15.1), so
//!   the streams allow `PAYLOAD_BYTES_MAX` plus `HEADER_BYTES_MAX`.
//! - Both the connection's request timeout and the JetStream context's timeout are set
//!   (nats.rs #1558).
//! - async-nats 0.51 ignores credentials in a server URL (nats.rs #1623: CONNECT goes out
//!   with no user), so `connect` takes `user:password@` (or a bare `token@`) from the URL
//!   itself and passes it as a connect option.

use super::group_commit::GroupCommit;
use super::read::start_direct;
use super::{
    APPENDS_IN_FLIGHT_MAX, CLIENT_COMMANDS_QUEUED_MAX, CONNECTION_TIMEOUT_MS, DUPLICATE_WINDOW_MS, EVENT_SUBJECTS, JetStreamLog, MESSAGE_BYTES_MAX,
    NATS_SERVER_MIN, NODE_STREAM_SUFFIX, NODE_SUBJECTS, PING_INTERVAL_MS, READ_ONLY_INBOX_PREFIX, RECONNECT_DELAY_MAX_MS, RECONNECT_DELAY_STEP_MS,
    REQUEST_TIMEOUT_MS, StreamOptions,
};
use async_nats::jetstream::context::{Context, ContextBuilder};
use async_nats::jetstream::stream::{self, DiscardPolicy, PersistenceMode, RetentionPolicy, StorageType};
use async_nats::{ConnectOptions, ServerAddr};
use std::time::Duration;

/// Why `connect` failed. Each message says what to do next; credentials in the URL are
/// never shown.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{url:?} is not a NATS URL ({reason}); use e.g. nats://127.0.0.1:4222, comma-separated for a cluster")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot connect to nats at {url}: {reason}; is nats-server running and reachable?")]
    Unreachable { url: String, reason: String },
    #[error(
        "nats at {url} has JetStream disabled; enable it with a `jetstream {{ store_dir: ..., sync_interval: always }}` block (deploy/ has configurations)"
    )]
    JetStreamDisabled { url: String },
    #[error("nats-server {found} at {url} is older than the required {}.{}.{} (earlier releases lose acknowledged writes under faults); upgrade it", NATS_SERVER_MIN.0, NATS_SERVER_MIN.1, NATS_SERVER_MIN.2)]
    ServerTooOld { url: String, found: String },
    #[error("{0:?} is not a valid stream name (letters, digits, '-' and '_'; no spaces, '.', '*' or '>')")]
    InvalidStreamName(String),
    #[error("stream {stream} exists with weaker settings than vouchsafe requires: {}; fix the stream (e.g. `nats stream edit {stream}`) or choose another stream name", differences.join("; "))]
    WeakerStream { stream: String, differences: Vec<String> },
    #[error("cannot create stream {stream} on {subjects}: {reason}; check the server's JetStream limits and that no other stream claims {subjects}")]
    CreateStream { stream: String, subjects: String, reason: String },
    #[error("cannot read stream {stream}: {reason}; is JetStream ready (a cluster needs a quorum), and may this user read it ($JS.API.STREAM.INFO.{stream})?")]
    StreamInfo { stream: String, reason: String },
    #[error(
        "stream {stream} does not exist at {url}, and a read-only connection never creates it; check --stream, or start the engine on this server first (it creates the stream)"
    )]
    MissingStream { url: String, stream: String },
}

impl JetStreamLog {
    /// Connects to `url` (comma-separated URLs for a cluster) and creates or verifies the
    /// primary stream `stream` and its node feed, with one replica.
    pub async fn connect(url: &str, stream: &str) -> Result<JetStreamLog, ConnectError> {
        Self::connect_with(url, stream, StreamOptions::default()).await
    }

    /// `connect` with explicit stream options (replicas for a cluster).
    pub async fn connect_with(url: &str, stream: &str, options: StreamOptions) -> Result<JetStreamLog, ConnectError> {
        let node_stream = format!("{stream}{NODE_STREAM_SUFFIX}");
        for name in [stream, node_stream.as_str()] {
            if !is_valid_stream_name(name) {
                return Err(ConnectError::InvalidStreamName(name.to_owned()));
            }
        }
        let context = connect_context(url, None).await?;
        let mut events = ensure_stream(&context, required_config(stream, EVENT_SUBJECTS, options.replicas)).await?;
        if options.group_commit && !events.cached_info().config.allow_atomic_publish {
            let mut config = events.cached_info().config.clone();
            config.allow_atomic_publish = true;
            context.update_stream(config).await.map_err(|error| ConnectError::CreateStream {
                stream: stream.to_owned(),
                subjects: EVENT_SUBJECTS.to_owned(),
                reason: format!("group commit needs atomic batch publish (allow_atomic, nats-server >= 2.12), and turning it on failed: {error}"),
            })?;
            events = context.get_stream(stream).await.map_err(|error| stream_info_error(stream, &error))?;
        }
        let nodes = ensure_stream(&context, required_config(&node_stream, NODE_SUBJECTS, options.replicas)).await?;
        let group_commit = options.group_commit.then(|| std::sync::Arc::new(GroupCommit::new(context.clone(), stream.to_owned())));
        let direct = start_direct(&context, stream).await?;
        Ok(JetStreamLog { context, events, nodes: Some(nodes), group_commit, direct })
    }

    /// Connects read-only, as an auditor: looks up the primary stream `stream` and verifies
    /// it as `connect` does, but never creates or changes a stream and never touches the
    /// node feed. Reads need only what deploy/nats-auth.conf grants its `auditor` user
    /// (stream info, ephemeral pull consumers and direct gets on `stream`, answers on
    /// `READ_ONLY_INBOX_PREFIX`); appends are refused without reaching the server.
    pub async fn connect_read_only(url: &str, stream: &str) -> Result<JetStreamLog, ConnectError> {
        if !is_valid_stream_name(stream) {
            return Err(ConnectError::InvalidStreamName(stream.to_owned()));
        }
        let context = connect_context(url, Some(READ_ONLY_INBOX_PREFIX)).await?;
        let required = required_config(stream, EVENT_SUBJECTS, StreamOptions::default().replicas);
        let events = match context.get_stream(stream).await {
            Ok(events) => events,
            Err(error) if is_stream_not_found(&error) => {
                return Err(ConnectError::MissingStream { url: redact_url(url), stream: stream.to_owned() });
            }
            Err(error) => return Err(stream_info_error(stream, &error)),
        };
        let events = verified(events, &required)?;
        let direct = start_direct(&context, stream).await?;
        Ok(JetStreamLog { context, events, nodes: None, group_commit: None, direct })
    }
}

fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .name("vouchsafe")
        .connection_timeout(Duration::from_millis(CONNECTION_TIMEOUT_MS))
        .request_timeout(Some(Duration::from_millis(REQUEST_TIMEOUT_MS)))
        .ping_interval(Duration::from_millis(PING_INTERVAL_MS))
        .client_capacity(CLIENT_COMMANDS_QUEUED_MAX)
        // A server process keeps trying; each request on the connection stays bounded.
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            let step = RECONNECT_DELAY_STEP_MS.saturating_mul(attempts as u64);
            Duration::from_millis(step.min(RECONNECT_DELAY_MAX_MS))
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("nats connection established"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("nats connection lost; reconnecting")
                }
                other => tracing::warn!(event = %other, "nats connection event"),
            }
        })
}

/// Checks the URL, connects, checks the server (JetStream on, version) and builds the
/// JetStream context; answers arrive on `inbox_prefix` (async-nats' `_INBOX` when `None`).
async fn connect_context(url: &str, inbox_prefix: Option<&str>) -> Result<Context, ConnectError> {
    let shown = redact_url(url);
    let addresses = url
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| part.parse::<ServerAddr>().map_err(|error| ConnectError::InvalidUrl { url: redact_url(part), reason: error.to_string() }))
        .collect::<Result<Vec<_>, _>>()?;
    if addresses.is_empty() {
        return Err(ConnectError::InvalidUrl { url: shown, reason: "no server given".to_owned() });
    }
    let credentials = url_credentials(&addresses).map_err(|reason| ConnectError::InvalidUrl { url: shown.clone(), reason })?;
    let mut options = connect_options();
    if let Some(prefix) = inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    match credentials {
        Some((user, Some(password))) => options = options.user_and_password(user, password),
        Some((token, None)) => options = options.token(token),
        None => {}
    }
    let client = options.connect(addresses).await.map_err(|error| ConnectError::Unreachable { url: shown.clone(), reason: error.to_string() })?;
    let info = client.server_info();
    if !info.jetstream {
        return Err(ConnectError::JetStreamDisabled { url: shown });
    }
    match parse_server_version(&info.version) {
        Some(version) if version >= NATS_SERVER_MIN => {}
        _ => {
            return Err(ConnectError::ServerTooOld { url: shown, found: info.version.clone() });
        }
    }
    Ok(ContextBuilder::new()
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .ack_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .max_ack_inflight(APPENDS_IN_FLIGHT_MAX)
        .backpressure_on_inflight(true)
        .build(client))
}

/// The credentials in the servers' URLs, percent-decoded: `(user, Some(password))` for
/// `user:password@`, `(token, None)` for a bare `token@`. Every server that names some must
/// name the same. The reason for a refusal never shows them.
fn url_credentials(addresses: &[ServerAddr]) -> Result<Option<(String, Option<String>)>, String> {
    let decode = |text: &str| percent_decode(text).ok_or_else(|| "the credentials are not valid percent-encoded UTF-8".to_owned());
    let mut found = None;
    for address in addresses {
        let Some(user) = address.username() else {
            continue;
        };
        let credentials = (decode(user)?, address.password().map(decode).transpose()?);
        match &found {
            Some(previous) if *previous != credentials => {
                return Err("the servers' URLs carry different credentials; give every server the same".to_owned());
            }
            _ => found = Some(credentials),
        }
    }
    Ok(found)
}

/// `%XX` escapes decoded; `None` for a broken escape or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// The settings vouchsafe requires of a stream, passed explicitly rather than relying on
/// server defaults.
fn required_config(name: &str, subjects: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        description: Some(format!("vouchsafe stream of record ({subjects}); events are immutable")),
        subjects: vec![subjects.to_owned()],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        num_replicas: replicas,
        // No limits, and a full stream refuses new events rather than dropping old ones.
        max_messages: -1,
        max_bytes: -1,
        max_messages_per_subject: -1,
        max_age: Duration::ZERO,
        max_consumers: -1,
        discard: DiscardPolicy::New,
        max_message_size: i32::try_from(MESSAGE_BYTES_MAX).expect("MESSAGE_BYTES_MAX is a few hundred KiB"),
        duplicate_window: Duration::from_millis(DUPLICATE_WINDOW_MS),
        deny_delete: true,
        deny_purge: true,
        allow_rollup: false,
        allow_direct: true,
        persist_mode: Some(PersistenceMode::Default),
        ..Default::default()
    }
}

/// Gets the stream, creating it if it is missing, and refuses one weaker than `required`.
async fn ensure_stream(context: &Context, required: stream::Config) -> Result<stream::Stream, ConnectError> {
    let name = required.name.clone();
    let stream = match context.get_stream(&name).await {
        Ok(stream) => stream,
        Err(error) if is_stream_not_found(&error) => {
            match context.create_stream(required.clone()).await {
                Ok(stream) => stream,
                Err(error) => match context.get_stream(&name).await {
                    // Another process created it meanwhile: verify theirs.
                    Ok(stream) => stream,
                    Err(_) => {
                        return Err(ConnectError::CreateStream { stream: name, subjects: required.subjects.join(","), reason: error.to_string() });
                    }
                },
            }
        }
        Err(error) => return Err(stream_info_error(&name, &error)),
    };
    verified(stream, &required)
}

/// The stream, unless it is weaker than `required`.
fn verified(stream: stream::Stream, required: &stream::Config) -> Result<stream::Stream, ConnectError> {
    let differences = weaker_settings(&stream.cached_info().config, required);
    if differences.is_empty() { Ok(stream) } else { Err(ConnectError::WeakerStream { stream: required.name.clone(), differences }) }
}

fn is_stream_not_found(error: &async_nats::jetstream::context::GetStreamError) -> bool {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::GetStreamErrorKind;
    matches!(error.kind(), GetStreamErrorKind::JetStream(inner) if inner.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

fn stream_info_error(name: &str, error: &async_nats::jetstream::context::GetStreamError) -> ConnectError {
    ConnectError::StreamInfo { stream: name.to_owned(), reason: error.to_string() }
}

/// Every setting of `found` that is weaker than `required`, described for the operator.
/// Stronger settings (more replicas, a longer duplicate window, larger messages) pass.
pub fn weaker_settings(found: &stream::Config, required: &stream::Config) -> Vec<String> {
    let mut differences = Vec::new();
    let mut differ = |setting: &str, found: String, required: String| {
        differences.push(format!("{setting} is {found} (required: {required})"));
    };
    if found.storage != StorageType::File {
        differ("storage", format!("{:?}", found.storage), "File".into());
    }
    if found.num_replicas < required.num_replicas {
        differ("replicas", found.num_replicas.to_string(), format!("at least {}", required.num_replicas));
    }
    if found.retention != RetentionPolicy::Limits {
        differ("retention", format!("{:?}", found.retention), "Limits".into());
    }
    if !found.deny_delete {
        differ("deny_delete", "false".into(), "true".into());
    }
    if !found.deny_purge {
        differ("deny_purge", "false".into(), "true".into());
    }
    if found.allow_rollup {
        differ("allow_rollup", "true".into(), "false (a rollup purges events)".into());
    }
    if found.discard != DiscardPolicy::New {
        differ("discard", format!("{:?}", found.discard), "New (never drop old events)".into());
    }
    for (setting, value) in [("max_msgs", found.max_messages), ("max_bytes", found.max_bytes), ("max_msgs_per_subject", found.max_messages_per_subject)] {
        if value > 0 {
            differ(setting, value.to_string(), "unlimited".into());
        }
    }
    if !found.max_age.is_zero() {
        differ("max_age", format!("{:?}", found.max_age), "unlimited".into());
    }
    if found.duplicate_window < required.duplicate_window {
        differ("duplicate_window", format!("{:?}", found.duplicate_window), format!("at least {:?}", required.duplicate_window));
    }
    if found.max_message_size > 0 && found.max_message_size < required.max_message_size {
        differ("max_msg_size", found.max_message_size.to_string(), format!("at least {}", required.max_message_size));
    }
    if !found.allow_direct {
        differ("allow_direct", "false".into(), "true".into());
    }
    for subject in &required.subjects {
        if !found.subjects.contains(subject) {
            differ("subjects", format!("{:?}", found.subjects), format!("to include {subject}"));
        }
    }
    if found.sealed {
        differ("sealed", "true".into(), "false".into());
    }
    if found.no_ack {
        differ("no_ack", "true".into(), "false".into());
    }
    if found.mirror.is_some() {
        differ("mirror", "set".into(), "none (a mirror cannot be appended to)".into());
    }
    if matches!(found.persist_mode, Some(PersistenceMode::Async)) {
        differ("persist_mode", "async".into(), "default (acknowledge after the write)".into());
    }
    if found.allow_message_ttl {
        differ("allow_msg_ttl", "true".into(), "false (a TTL deletes events)".into());
    }
    if found.subject_delete_marker_ttl.is_some() {
        differ("subject_delete_marker_ttl", "set".into(), "none".into());
    }
    if found.allow_message_counter {
        differ("allow_msg_counter", "true".into(), "false".into());
    }
    differences
}

fn is_valid_stream_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `2.15.1` or `2.12.3-RC.1` into (2, 15, 1).
fn parse_server_version(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.trim_start_matches('v').split(['.', '-']).map(str::parse::<u32>);
    Some((parts.next()?.ok()?, parts.next()?.ok()?, parts.next()?.ok()?))
}

/// The URL with any user info replaced, fit for messages and logs.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|part| {
            let part = part.trim();
            let (scheme, rest) = match part.find("://") {
                Some(index) => part.split_at(index + 3),
                None => ("", part),
            };
            match rest.rfind('@') {
                Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
                None => part.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_in_urls() {
        assert_eq!(redact_url("nats://user:secret@10.0.0.1:4222, nats://10.0.0.2:4222"), "nats://***@10.0.0.1:4222,nats://10.0.0.2:4222");
        assert_eq!(redact_url("tok@host:4222"), "***@host:4222");
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }

    #[test]
    fn credentials_are_taken_from_the_urls() {
        let addresses = |url: &str| -> Vec<ServerAddr> { url.split(',').map(|part| part.parse().expect("a server address")).collect() };
        let user = |user: &str, password: Option<&str>| Ok(Some((user.to_owned(), password.map(str::to_owned))));
        assert_eq!(url_credentials(&addresses("nats://127.0.0.1:4222")), Ok(None));
        assert_eq!(url_credentials(&addresses("nats://auditor:s3cret@h1:4222,nats://h2:4222")), user("auditor", Some("s3cret")));
        assert_eq!(url_credentials(&addresses("nats://a%40b:p%3Aw%25d@h1:4222")), user("a@b", Some("p:w%d")));
        assert_eq!(url_credentials(&addresses("nats://tok@h1:4222")), user("tok", None));
        assert_eq!(url_credentials(&addresses("nats://u:p@h1:4222,nats://u:p@h2:4222")), user("u", Some("p")));
        let refused = url_credentials(&addresses("nats://u:p@h1:4222,nats://u:q@h2:4222")).expect_err("different credentials");
        assert!(!refused.contains(":p") && !refused.contains(":q"), "{refused}");
        assert!(url_credentials(&addresses("nats://u:%ff@h1:4222")).is_err());
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("50%"), None);
    }

    #[test]
    fn server_versions() {
        assert_eq!(parse_server_version("2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_server_version("v2.12.3-RC.1"), Some((2, 12, 3)));
        assert!(parse_server_version("2.12.1").expect("parses") < NATS_SERVER_MIN);
        assert_eq!(parse_server_version("dev"), None);
    }

    #[test]
    fn the_required_config_is_not_weaker_than_itself_and_each_weakening_is_named() {
        let required = required_config("VS", EVENT_SUBJECTS, 3);
        assert!(weaker_settings(&required, &required).is_empty());
        let stronger = stream::Config { num_replicas: 5, duplicate_window: Duration::from_secs(600), max_message_size: -1, ..required.clone() };
        assert!(weaker_settings(&stronger, &required).is_empty());
        let cases: Vec<(&str, stream::Config)> = vec![
            ("deny_delete", stream::Config { deny_delete: false, ..required.clone() }),
            ("deny_purge", stream::Config { deny_purge: false, ..required.clone() }),
            ("storage", stream::Config { storage: StorageType::Memory, ..required.clone() }),
            ("replicas", stream::Config { num_replicas: 1, ..required.clone() }),
            ("max_msgs", stream::Config { max_messages: 10, ..required.clone() }),
            ("max_age", stream::Config { max_age: Duration::from_secs(60), ..required.clone() }),
            ("discard", stream::Config { discard: DiscardPolicy::Old, ..required.clone() }),
            ("duplicate_window", stream::Config { duplicate_window: Duration::from_secs(1), ..required.clone() }),
            ("allow_direct", stream::Config { allow_direct: false, ..required.clone() }),
            ("retention", stream::Config { retention: RetentionPolicy::WorkQueue, ..required.clone() }),
            ("persist_mode", stream::Config { persist_mode: Some(PersistenceMode::Async), ..required.clone() }),
            ("subjects", stream::Config { subjects: vec!["vs.voucher.>".into()], ..required.clone() }),
        ];
        for (setting, found) in cases {
            let differences = weaker_settings(&found, &required);
            assert_eq!(differences.len(), 1, "{setting}: {differences:?}");
            assert!(differences[0].starts_with(setting), "{setting}: {differences:?}");
        }
    }
}
