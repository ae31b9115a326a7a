//! The command line: `args` (clap's view of every subcommand), `dispatch` (runs a parsed
//! command and turns it into an exit code), `admin` (the operator's administration),
//! `inspect` (media containers and delivered copies), `player` (the reference consumer),
//! `points` (top-ups), `reads` (lists, statements, catalog search, ledger, parties), and
//! here the other network clients' subcommands (`keys issue`,
//! `merchant`, `publish`, `node`):
//! argument shapes and what each prints. Human output goes to stderr, `--json` prints one object on the
//! last line of stdout (CLI.md). A refused command exits 1 with the engine's status code
//! and message; a connection or usage problem exits 2.

pub mod admin;
pub mod args;
pub mod audit;
pub mod dispatch;
pub mod inspect;
pub mod keys;
pub mod player;
pub mod points;
pub mod reads;

pub use args::Cli;

use crate::common::client;
use crate::common::cred::Credential;
use anyhow::Context;
use proto::v1 as pb;
use std::path::PathBuf;

/// How a client reaches the engine.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// The engine's gRPC endpoint, e.g. http://127.0.0.1:50051 (https with TLS); several
    /// engines on one stream comma-separated: the first that answers, the next on failure.
    #[arg(long, global = true, default_value = "http://127.0.0.1:50051")]
    pub connect: String,
    /// PEM of the CA that signed the engine's TLS certificate (for https with a private CA).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// PEM certificate to present to an engine that requires client certificates (mTLS).
    #[arg(long, global = true, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, global = true, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Send the credential over http:// to a non-loopback engine (a private network of
    /// your own); without it only loopback may be plain text.
    #[arg(long, global = true)]
    pub insecure_plaintext: bool,
}

fn read_pem(what: &str, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {what} file {}", path.display()))
}

impl ConnectArgs {
    /// The PEM files of `--ca`, `--client-cert` and `--client-key`, for a client (the node
    /// agent) that builds its own connection.
    pub fn engine_tls(&self) -> anyhow::Result<crate::node::EngineTls> {
        let ca_pem = self.ca.as_ref().map(|path| crate::common::tls::load_ca(path, "--ca")).transpose()?;
        let client_identity = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some((read_pem("client certificate", cert)?, read_pem("client key", key)?)),
            _ => None,
        };
        Ok(crate::node::EngineTls { ca_pem, client_identity })
    }

    /// The engines of `--connect` (several comma-separated: failover, `common::failover`).
    pub async fn channel(&self) -> anyhow::Result<client::Engines> {
        crate::common::plaintext::check_url(&self.connect, self.insecure_plaintext)?;
        let ca = self.ca.as_ref().map(|path| crate::common::tls::load_ca(path, "--ca")).transpose()?;
        let cert_pem = self.client_cert.as_ref().map(|path| read_pem("client certificate", path)).transpose()?;
        let key_pem = self.client_key.as_ref().map(|path| read_pem("client key", path)).transpose()?;
        let identity = match (&cert_pem, &key_pem) {
            (Some(cert_pem), Some(key_pem)) => Some(client::ClientIdentity { cert_pem, key_pem }),
            (None, None) => None,
            _ => anyhow::bail!("--client-cert and --client-key go together"),
        };
        // A handshake the engine refuses is a connection failure (exit 2), not a refusal: each
        // engine's health is checked before it is used.
        client::connect_any(&self.connect, ca.as_deref(), identity).await
    }
}

/// Keys of a command's answer that hold a secret for its recipient (the player).
const SECRET_KEYS: &[&str] = &["receipt", "access_token"];

/// The human form of an answer, for stderr. Stderr ends up in logs, so the receipt and the
/// access token are handed over only on stdout, with --json.
fn human(value: &serde_json::Value) -> String {
    let mut shown = value.clone();
    if let Some(object) = shown.as_object_mut() {
        for secret in SECRET_KEYS {
            if object.contains_key(*secret) {
                object.insert((*secret).to_string(), serde_json::Value::String("(not shown; use --json to receive it on stdout)".into()));
            }
        }
    }
    serde_json::to_string_pretty(&shown).unwrap_or_else(|_| shown.to_string())
}

/// A command's outcome: the engine refused (exit 1) or it worked (exit 0).
pub enum Outcome {
    Done(serde_json::Value),
    Refused(tonic::Status),
}

impl Outcome {
    /// Prints the outcome (JSON on stdout with `json`, a readable form on stderr always)
    /// and returns the exit code.
    pub fn report(self, json: bool) -> std::process::ExitCode {
        match self {
            Outcome::Done(value) => {
                if json {
                    println!("{value}");
                } else {
                    eprintln!("{}", human(&value));
                }
                std::process::ExitCode::SUCCESS
            }
            Outcome::Refused(status) => {
                eprintln!("refused: {:?}: {}", status.code(), status.message());
                if json {
                    println!("{}", serde_json::json!({ "refused": format!("{:?}", status.code()), "message": status.message() }));
                }
                std::process::ExitCode::from(1)
            }
        }
    }
}

fn refused(status: tonic::Status) -> anyhow::Result<Outcome> {
    // A transport failure is an environment problem (exit 2), not a refusal. The engine's
    // own refusals carry no error source; tonic attaches the transport error (connection
    // refused, reset, h2 protocol error) as the source of the statuses it makes up.
    if std::error::Error::source(&status).is_some() || (status.code() == tonic::Code::Unavailable && status.message().contains("transport")) {
        anyhow::bail!("cannot reach the engine: {:?}: {}", status.code(), status.message());
    }
    Ok(Outcome::Refused(status))
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum IssueKind {
    /// A merchant credential (MerchantService).
    Merchant,
    /// A delivery node credential (DeliveryService).
    Node,
    /// A read-only auditor credential (AuditService).
    Auditor,
    /// A publisher account (CatalogService.PublishMedia): its signing keys
    /// (--publisher-key) and the terms its media is sold under.
    Publisher,
}

#[derive(clap::Args, Debug)]
pub struct IssueArgs {
    /// Print one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// Which credential: merchant, node or auditor.
    #[arg(value_enum)]
    pub kind: IssueKind,
    /// The merchant's or auditor's name.
    #[arg(long, default_value = "unnamed")]
    pub name: String,
    /// A node's region.
    #[arg(long, default_value = "eu")]
    pub region: String,
    /// A node's stream slots.
    #[arg(long, default_value_t = 64)]
    pub slots: u32,
    /// A publisher's signing key, its public half (SPKI PEM, e.g. publisher.pub.pem);
    /// repeat for several. Its containers must be signed by one of them.
    #[arg(long = "publisher-key")]
    pub publisher_keys: Vec<PathBuf>,
    /// A publisher's rights owner, distributor and rights agent (its royalty terms).
    #[arg(long, default_value = "label-1")]
    pub owner: String,
    #[arg(long, default_value = "dist-1")]
    pub distributor: String,
    #[arg(long, default_value = "agent-1")]
    pub rights_agent: String,
    /// A publisher's shares of each sale, in basis points (retailer, distributor, owner:
    /// together 10000).
    #[arg(long, default_value_t = 3000)]
    pub retailer_bps: u32,
    #[arg(long, default_value_t = 2000)]
    pub distributor_bps: u32,
    #[arg(long, default_value_t = 5000)]
    pub owner_bps: u32,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The key directory holding operator.cred.
    #[arg(long)]
    pub keys: PathBuf,
    /// Where to write the new credential file (0600; must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Request id (a retry with the same id is refused: a secret is shown once).
    #[arg(long)]
    pub request_id: Option<String>,
}

fn fresh_request_id(prefix: &str) -> String {
    format!("{prefix}-{}", hex::encode(engine::crypto::random_bytes::<8>()))
}

pub async fn issue(args: IssueArgs) -> anyhow::Result<Outcome> {
    let operator = Credential::load(&args.keys.join(crate::common::keys::OPERATOR_CRED))?;
    let mut catalog = client::catalog(args.connect.channel().await?, operator);
    let request_id = args.request_id.clone().unwrap_or_else(|| fresh_request_id("cred"));
    let (kind, answer) = match args.kind {
        IssueKind::Merchant => ("merchant", catalog.register_merchant(pb::RegisterMerchantRequest { request_id, name: args.name.clone() }).await),
        IssueKind::Node => (
            "node",
            catalog.register_node_credential(pb::RegisterNodeCredentialRequest { request_id, region: args.region.clone(), slots_max: args.slots }).await,
        ),
        IssueKind::Auditor => ("auditor", catalog.register_auditor(pb::RegisterAuditorRequest { request_id, name: args.name.clone() }).await),
        IssueKind::Publisher => {
            if args.publisher_keys.is_empty() {
                anyhow::bail!("a publisher needs at least one --publisher-key PEM (the public key its containers are signed with)");
            }
            let mut public_keys_der = Vec::new();
            for path in &args.publisher_keys {
                let pem = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                let key = engine::crypto::RsaPublic::from_pem(&pem).with_context(|| format!("{} is not an RSA public key (SPKI PEM)", path.display()))?;
                public_keys_der.push(key.to_der()?);
            }
            let terms = pb::RoyaltyTermsInput {
                retailer_bps: args.retailer_bps,
                distributor_bps: args.distributor_bps,
                owner_bps: args.owner_bps,
                distributor: args.distributor.clone(),
                owner: args.owner.clone(),
                rights_agent: args.rights_agent.clone(),
            };
            let request = pb::RegisterPublisherRequest { request_id, name: args.name.clone(), terms: Some(terms), public_keys_der };
            ("publisher", catalog.register_publisher(request).await)
        }
    };
    let credential = match answer {
        Ok(response) => client::credential_of(response.into_inner())?,
        Err(status) => return refused(status),
    };
    credential.save(&args.out)?;
    eprintln!("wrote the {kind} credential {} to {}", credential.id, args.out.display());
    Ok(Outcome::Done(serde_json::json!({ "kind": kind, "id": credential.id, "cred_file": args.out })))
}

#[derive(clap::Args, Debug)]
pub struct PublishArgs {
    /// Print one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The operator's or a publisher's credential file (`keys issue publisher`): a
    /// publisher signs with a registered key and sells under its account's terms.
    #[arg(long)]
    pub cred: PathBuf,
    /// The engine's public key (engine.pub.pem): media keys are wrapped for it.
    #[arg(long)]
    pub engine_key: PathBuf,
    /// The publisher's signing key (PKCS#8 PEM RSA); default
    /// <data-dir>/publisher/publisher.pem, created (with publisher.pub.pem) when missing.
    #[arg(long)]
    pub sign_key: Option<PathBuf>,
    /// Where the default publisher key lives.
    #[arg(long, default_value = "./vouchsafe-data")]
    pub data_dir: PathBuf,
    /// The title (default: the file name without extension); only with one media.
    #[arg(long)]
    pub title: Option<String>,
    #[arg(long, default_value = "Unknown Artist")]
    pub artist: String,
    /// Price in minor units (cents).
    #[arg(long, default_value_t = 99)]
    pub price: u64,
    #[arg(long, default_value = "EUR")]
    pub currency: String,
    /// Playing time of each media, in milliseconds.
    #[arg(long, default_value_t = 180_000)]
    pub length_ms: u64,
    /// The rights owner named in the royalty terms.
    #[arg(long, default_value = "label-1")]
    pub owner: String,
    /// One media from several renditions: NAME=FILE or NAME:KBPS=FILE, repeated
    /// (e.g. --rendition high=song.flac --rendition low:96=song-96k.mp3).
    #[arg(long = "rendition", value_parser = parse_rendition, conflicts_with = "files")]
    pub renditions: Vec<RenditionArg>,
    /// Lyrics (text file), free to view unless `--encrypt lyrics`.
    #[arg(long)]
    pub lyrics: Option<PathBuf>,
    /// Liner notes (text file), free to view unless `--encrypt liner-notes`.
    #[arg(long)]
    pub liner_notes: Option<PathBuf>,
    /// Cover art (image file), free to view unless `--encrypt cover`.
    #[arg(long)]
    pub cover: Option<PathBuf>,
    /// Promotional art (image file), free to view unless `--encrypt promo`.
    #[arg(long)]
    pub promo: Option<PathBuf>,
    /// Encrypt a descriptive component with the media key, so only buyers can read it.
    #[arg(long = "encrypt", value_enum)]
    pub encrypt: Vec<EncryptedPart>,
    /// Where the free preview clip starts in the media, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub preview_start_ms: u64,
    /// Length of the free preview clip (default: 30 s, or the whole media when shorter;
    /// 0: no preview).
    #[arg(long)]
    pub preview_ms: Option<u64>,
    #[arg(long, default_value_t = 0)]
    pub fade_in_ms: u32,
    #[arg(long, default_value_t = 0)]
    pub fade_out_ms: u32,
    /// The preview clip's bytes (default: the matching byte range of the smallest rendition).
    #[arg(long)]
    pub preview_clip: Option<PathBuf>,
    /// Publish the media without offering it for sale (it can still be previewed).
    #[arg(long)]
    pub not_for_sale: bool,
    /// Plaintext bytes per encrypted chunk.
    #[arg(long, default_value_t = engine::media::CHUNK_BYTES_DEFAULT, value_parser = clap::value_parser!(u32).range(i64::from(engine::media::CHUNK_BYTES_MIN)..=i64::from(engine::media::CHUNK_BYTES_MAX)))]
    pub chunk_bytes: u32,
    /// Media files to publish, one media each, as its single "high" rendition (the title is
    /// the file name without extension).
    #[arg(required_unless_present = "renditions")]
    pub files: Vec<PathBuf>,
}

/// A `--rendition NAME[:KBPS]=FILE` argument.
#[derive(Clone, Debug)]
pub struct RenditionArg {
    pub name: String,
    pub bitrate_kbps: u32,
    pub file: PathBuf,
}

/// The bitrate a rendition is labelled with when `--rendition` does not say.
fn default_bitrate_kbps(name: &str) -> u32 {
    match name {
        "high" => 256,
        "medium" => 160,
        "low" => 96,
        _ => 128,
    }
}

fn parse_rendition(value: &str) -> Result<RenditionArg, String> {
    let (label, file) = value.split_once('=').ok_or("expected NAME=FILE or NAME:KBPS=FILE")?;
    let (name, bitrate_kbps) = match label.split_once(':') {
        Some((name, kbps)) => (name, kbps.parse::<u32>().map_err(|_| format!("{kbps:?} is not a bitrate in kbps"))?),
        None => (label, default_bitrate_kbps(label)),
    };
    if !engine::ids::is_valid_token(name) || file.is_empty() {
        return Err("the rendition name must be 1-64 characters of A-Z a-z 0-9 - _, followed by =FILE".into());
    }
    Ok(RenditionArg { name: name.to_string(), bitrate_kbps, file: PathBuf::from(file) })
}

/// A descriptive component `--encrypt` can name.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncryptedPart {
    Lyrics,
    LinerNotes,
    Cover,
    Promo,
}

/// A media type from a file's extension (what players show; nothing here decodes it).
fn media_type_of(path: &std::path::Path) -> &'static str {
    let extension = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "mp3" => "audio/mpeg",
        "flac" => "audio/flac",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "wav" => "audio/wav",
        "m4a" | "aac" => "audio/mp4",
        "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn read_file(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The publisher's signing key: `--sign-key`, or `<data-dir>/publisher/publisher.pem`,
/// generated on first use.
async fn publisher_key(args: &PublishArgs) -> anyhow::Result<(engine::crypto::RsaPrivate, PathBuf)> {
    match &args.sign_key {
        Some(path) => Ok((load_publisher_key(path)?, path.clone())),
        None => {
            let path = default_publisher_key_path(&args.data_dir);
            Ok((load_or_create_publisher_key(&path).await?, path))
        }
    }
}

/// Where `publish` and the demo keep the publisher's key by default.
pub fn default_publisher_key_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("publisher").join("publisher.pem")
}

fn load_publisher_key(path: &std::path::Path) -> anyhow::Result<engine::crypto::RsaPrivate> {
    let pem = zeroize::Zeroizing::new(std::fs::read_to_string(path).with_context(|| format!("cannot read the publisher key {}", path.display()))?);
    engine::crypto::RsaPrivate::from_pkcs8_pem(&pem).with_context(|| format!("{} is not a PKCS#8 RSA private key", path.display()))
}

/// The publisher key at `path`, or a new RSA-2048 key written there (mode 0600, in a 0700
/// directory, with `publisher.pub.pem` beside it) when there is none.
pub async fn load_or_create_publisher_key(path: &std::path::Path) -> anyhow::Result<engine::crypto::RsaPrivate> {
    if path.exists() {
        return load_publisher_key(path);
    }
    let dir = path.parent().context("the publisher key path has no directory")?.to_path_buf();
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = tokio::task::spawn_blocking(|| engine::crypto::RsaPrivate::generate(crate::common::keys::ENGINE_RSA_BITS))
        .await
        .context("the key generation task failed")??;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("cannot create {}", path.display()))?;
    std::io::Write::write_all(&mut file, key.to_pkcs8_pem()?.as_bytes())?;
    file.sync_all()?;
    std::fs::write(dir.join("publisher.pub.pem"), key.public().to_pem()?)
        .with_context(|| format!("cannot write the publisher's public key in {}", dir.display()))?;
    eprintln!("created the publisher key {} (key id {})", path.display(), key.public().key_id());
    Ok(key)
}

/// The descriptive components the flags name, each free or encrypted.
fn extra_components(args: &PublishArgs) -> anyhow::Result<Vec<client::ComponentUpload>> {
    let mut components = Vec::new();
    let parts = [
        (&args.lyrics, "lyrics", EncryptedPart::Lyrics, true),
        (&args.liner_notes, "liner_notes", EncryptedPart::LinerNotes, true),
        (&args.cover, "cover", EncryptedPart::Cover, false),
        (&args.promo, "promo", EncryptedPart::Promo, false),
    ];
    for (path, name, part, text) in parts {
        let Some(path) = path else { continue };
        let media_type = if text { "text/plain; charset=utf-8" } else { media_type_of(path) };
        components.push(client::ComponentUpload {
            name: name.into(),
            media_type: media_type.into(),
            encrypted: args.encrypt.contains(&part),
            data: read_file(path)?,
        });
    }
    Ok(components)
}

/// The free preview: `--preview-clip`, or the byte range of the smallest rendition that
/// matches the preview window (a real publisher cuts the clip with an audio tool; bytes
/// in proportion to time is right for constant-bitrate files only).
fn preview_of(args: &PublishArgs, renditions: &[(client::RenditionUpload, PathBuf)]) -> anyhow::Result<Option<client::PreviewUpload>> {
    let duration_ms = args.preview_ms.unwrap_or_else(|| args.length_ms.saturating_sub(args.preview_start_ms).min(30_000));
    if duration_ms == 0 || args.length_ms == 0 {
        return Ok(None);
    }
    anyhow::ensure!(
        args.preview_start_ms.saturating_add(duration_ms) <= args.length_ms,
        "the preview ({} ms from {} ms) ends after the media ({} ms)",
        duration_ms,
        args.preview_start_ms,
        args.length_ms
    );
    anyhow::ensure!(u64::from(args.fade_in_ms) + u64::from(args.fade_out_ms) <= duration_ms, "the fades are longer than the preview");
    let (smallest, path) = renditions.iter().min_by_key(|(rendition, _)| rendition.content.len()).context("no renditions")?;
    let (clip, media_type) = match &args.preview_clip {
        Some(clip) => (read_file(clip)?, media_type_of(clip)),
        None => {
            let size = smallest.content.len() as u128;
            let at = |ms: u64| usize::try_from(size * u128::from(ms) / u128::from(args.length_ms)).unwrap_or(usize::MAX).min(smallest.content.len());
            (smallest.content[at(args.preview_start_ms)..at(args.preview_start_ms + duration_ms)].to_vec(), media_type_of(path))
        }
    };
    Ok(Some(client::PreviewUpload {
        start_ms: args.preview_start_ms,
        duration_ms,
        fade_in_ms: args.fade_in_ms,
        fade_out_ms: args.fade_out_ms,
        media_type: media_type.into(),
        clip,
    }))
}

/// Publishes signed format-2 containers: one per positional FILE (its single "high"
/// rendition), or one from the `--rendition` files.
pub async fn publish(args: PublishArgs) -> anyhow::Result<Outcome> {
    let operator = Credential::load(&args.cred)?;
    let engine_public = crate::common::keys::engine_public_from_file(&args.engine_key)?;
    anyhow::ensure!(
        args.title.is_none() || args.files.len() <= 1,
        "--title names one media; publish several files without it (each is titled by its file name)"
    );
    let components = extra_components(&args)?;
    // One media per positional file, or one media from every --rendition.
    let mut media: Vec<(String, Vec<(client::RenditionUpload, PathBuf)>)> = Vec::new();
    for file in &args.files {
        let title = args.title.clone().unwrap_or_else(|| file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "Untitled".into()));
        media.push((
            title,
            vec![(client::RenditionUpload { name: "high".into(), bitrate_kbps: default_bitrate_kbps("high"), content: read_file(file)? }, file.clone())],
        ));
    }
    if !args.renditions.is_empty() {
        let mut renditions = Vec::new();
        for rendition in &args.renditions {
            renditions.push((
                client::RenditionUpload { name: rendition.name.clone(), bitrate_kbps: rendition.bitrate_kbps, content: read_file(&rendition.file)? },
                rendition.file.clone(),
            ));
        }
        let title = args
            .title
            .clone()
            .unwrap_or_else(|| args.renditions[0].file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "Untitled".into()));
        media.push((title, renditions));
    }
    for (_, renditions) in &media {
        for (rendition, path) in renditions {
            anyhow::ensure!(!rendition.content.is_empty(), "{} is empty", path.display());
        }
    }
    let (sign_key, sign_key_path) = publisher_key(&args).await?;
    let mut catalog = client::catalog(args.connect.channel().await?, operator.clone());
    let mut published = Vec::new();
    for (title, renditions) in media {
        let preview = preview_of(&args, &renditions)?;
        let files: Vec<PathBuf> = renditions.iter().map(|(_, path)| path.clone()).collect();
        // The request id is derived from what is published, so publishing the same media
        // twice is answered from the first publication instead of creating a second one.
        let mut summary = format!("{title}\n{}\n{}\n{}\n{}\n{}\n", args.artist, args.length_ms, args.price, args.currency, !args.not_for_sale);
        for (rendition, _) in &renditions {
            summary.push_str(&format!("{}:{}:{}\n", rendition.name, rendition.bitrate_kbps, hex::encode(engine::crypto::hash(&rendition.content))));
        }
        for component in &components {
            summary.push_str(&format!("{}:{}:{}\n", component.name, component.encrypted, hex::encode(engine::crypto::hash(&component.data))));
        }
        if let Some(preview) = &preview {
            summary.push_str(&format!(
                "{}:{}:{}:{}:{}\n",
                preview.start_ms,
                preview.duration_ms,
                preview.fade_in_ms,
                preview.fade_out_ms,
                hex::encode(engine::crypto::hash(&preview.clip))
            ));
        }
        let request_id = format!("publish-{}", &hex::encode(engine::crypto::hash(summary.as_bytes()))[..32]);
        let upload = client::ContainerUpload {
            title: title.clone(),
            artist: args.artist.clone(),
            authors: vec![args.artist.clone()],
            length_ms: args.length_ms,
            price_minor: args.price,
            currency: args.currency.clone(),
            terms: client::standard_terms(&args.owner),
            renditions: renditions.into_iter().map(|(rendition, _)| rendition).collect(),
            components: components.clone(),
            preview,
            for_sale: !args.not_for_sale,
            image_descriptor: args.cover.as_ref().map(|cover| cover.display().to_string()).unwrap_or_default(),
            chunk_bytes: args.chunk_bytes,
        };
        match client::publish_container(&mut catalog, &operator.id, &request_id, &engine_public, &sign_key, upload).await {
            Ok(media) => {
                eprintln!(
                    "published {title:?} as {} ({} bytes, format {}, signed by publisher key {})",
                    media.media_id,
                    media.container_bytes,
                    media.format_version,
                    sign_key.public().key_id()
                );
                published.push(serde_json::json!({
                    "file": files.first(),
                    "files": files,
                    "title": title,
                    "media_id": media.media_id,
                    "content_hash": hex::encode(media.content_hash),
                    "renditions": media.renditions.iter().map(|(name, hash)| serde_json::json!({ "name": name, "content_hash": hex::encode(hash) })).collect::<Vec<_>>(),
                    "format_version": media.format_version,
                    "container_bytes": media.container_bytes,
                    "publisher_key_id": sign_key.public().key_id(),
                    "for_sale": !args.not_for_sale,
                }));
            }
            Err(error) => match error.downcast::<tonic::Status>() {
                Ok(status) => return refused(status),
                Err(error) => return Err(error),
            },
        }
    }
    Ok(Outcome::Done(serde_json::json!({ "media": published, "publisher_key": sign_key_path })))
}

#[derive(clap::Subcommand, Debug)]
pub enum OrderCommand {
    /// Place an order: prints the order id.
    Place {
        #[arg(long)]
        media: String,
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        units: u32,
    },
    /// Bind unit N to a certified device: prints the media key wrapped for that device
    /// (hex; only the device's private key opens it).
    Bind {
        #[arg(long)]
        order: String,
        #[arg(long)]
        unit: u32,
        /// The device's id (the consumer id its certificate names).
        #[arg(long)]
        device: String,
        /// The device certificate's serial.
        #[arg(long)]
        device_cert: String,
    },
    /// Record unit N as duplicated.
    Complete {
        #[arg(long)]
        order: String,
        #[arg(long)]
        unit: u32,
    },
    /// The merchant's orders, newest first: units placed, bound and completed.
    List {
        /// At most this many orders (following the engine's pages).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: u32,
        /// Where an earlier list stopped (its next_cursor).
        #[arg(long)]
        cursor: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum MerchantCommand {
    /// Reserve media for a buyer: prints the voucher id and expiry.
    Reserve {
        #[arg(long = "media", required = true)]
        media_ids: Vec<String>,
        #[arg(long, default_value_t = 15 * 60 * 1000)]
        ttl_ms: u64,
        /// Pay from this consumer points account instead of the merchant's own payment
        /// (the account the spend authorization names, when absent).
        #[arg(long)]
        points_account: Option<String>,
        /// The consumer's consent (`player authorize-spend --out FILE`).
        #[arg(long)]
        spend_authorization: Option<PathBuf>,
        #[arg(long, default_value = "high")]
        rendition: String,
        /// Rent instead of buying: the window (ms) the buyer chose, within the engine's
        /// `rental.window_ms_min..=max`, priced per window; it starts at Authorize.
        #[arg(long, default_value_t = 0)]
        rental_ms: u64,
    },
    /// Authorize a reserved voucher after payment: prints the receipt (hex) for the player.
    Authorize {
        #[arg(long)]
        voucher: String,
    },
    /// Void a voucher (refund).
    Void {
        #[arg(long)]
        voucher: String,
    },
    /// Give a sale's money back: a void while no key was released, else a refund (or, with
    /// --chargeback, a chargeback) that reverses the postings and adjusts the royalties.
    Refund {
        #[arg(long)]
        voucher: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        chargeback: bool,
    },
    /// Issue the media voucher to a delivery node: prints the node and the access token.
    Issue {
        #[arg(long)]
        voucher: String,
        #[arg(long)]
        region: Option<String>,
    },
    /// Issue a paid voucher anew: after its access window lapsed unused, its node was
    /// drained, removed or went silent, or its deliveries failed past the retries (a new
    /// node or window and a new access token; the receipt stays); for a delivered one,
    /// renew its access so its consumer can recover a lost copy after the window.
    Reissue {
        #[arg(long)]
        voucher: String,
        #[arg(long)]
        region: Option<String>,
        /// The sale file (`buy --out`) to bring up to date in place (kept 0600): its node,
        /// endpoint and access token become the reissue's, so `player fetch --sale` follows.
        #[arg(long)]
        sale: Option<PathBuf>,
    },
    /// Licensed duplication: place an order of units of one media, bind a unit to a device
    /// the operator certified (`player passport --consumer DEVICE` certifies one; the unit
    /// pays as it binds and its media key is wrapped for that device only), complete it.
    #[command(subcommand)]
    Order(OrderCommand),
    /// Reserve, authorize and issue in one go: prints everything a player needs.
    Buy {
        #[arg(long = "media", required = true)]
        media_ids: Vec<String>,
        /// Pay from this consumer points account (the authorization's, when absent).
        #[arg(long)]
        points_account: Option<String>,
        /// The consumer's consent (`player authorize-spend --out FILE`).
        #[arg(long)]
        spend_authorization: Option<PathBuf>,
        /// Rent instead of buying: the window (ms) the buyer chose, within the engine's
        /// `rental.window_ms_min..=max`, priced per window. Each play is `merchant reissue
        /// --sale FILE` then `player fetch`, on any healthy node, until the window ends.
        #[arg(long, default_value_t = 0)]
        rental_ms: u64,
    },
    /// Start a preview of one media on a node.
    Preview {
        #[arg(long)]
        media: String,
        #[arg(long)]
        region: Option<String>,
    },
    /// Show a voucher.
    Get {
        #[arg(long)]
        voucher: String,
    },
    /// The merchant's own vouchers, newest first: all, or one set (or status).
    List {
        #[arg(long, value_enum)]
        set: Option<reads::SetArg>,
        /// One status: Pending, Authorized, Issued, Redeeming, Delivered, Voided, Refunded.
        #[arg(long)]
        status: Option<String>,
        /// At most this many vouchers.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: u32,
        /// Go on from a `next_cursor` an earlier list printed.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// The merchant's figures for one month (UTC): usage, sales, refunds, postings by kind.
    Statement {
        #[arg(long, value_parser = reads::parse_period)]
        period: String,
    },
    /// The rental windows this merchant offers (`buy --rental-ms` within them and within the
    /// operator's rental.window_ms_min..max); 0 and 0: the operator's bounds.
    RentalWindow {
        #[arg(long)]
        min_ms: u64,
        #[arg(long)]
        max_ms: u64,
    },
}

#[derive(clap::Args, Debug)]
pub struct MerchantArgs {
    /// Print one JSON object on the last line of stdout.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: MerchantCommand,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The merchant's credential file (required).
    #[arg(long, global = true)]
    pub cred: Option<PathBuf>,
    /// The merchant's request id (retrying with the same id returns the first answer);
    /// a fresh one is made up when absent.
    #[arg(long, global = true)]
    pub request_id: Option<String>,
    /// Also write the answer's JSON (for `buy`, the sale a player redeems) to this file,
    /// readable by its owner only (0600): it holds the receipt.
    #[arg(long, global = true)]
    pub out: Option<PathBuf>,
}

/// The sale file of `voucher` (`buy --out`), read to be brought up to date by a reissue.
fn sale_of(path: &std::path::Path, voucher: &str) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let sale: serde_json::Value = serde_json::from_str(&text).context("the sale file is not the JSON `merchant buy --out` writes")?;
    anyhow::ensure!(sale["voucher_id"].as_str() == Some(voucher), "{} is the sale of another voucher, not {voucher}", path.display());
    Ok(sale)
}

/// An IssueVoucher answer as `merchant issue|reissue --json` print it.
fn issued_json(issued: &pb::IssueVoucherResponse) -> serde_json::Value {
    serde_json::json!({
        "voucher_id": issued.voucher_id, "node_id": issued.node_id, "node_endpoint": issued.node_endpoint,
        "access_token": hex::encode(&issued.access_token), "access_expires_at_ms": issued.access_expires_at_ms,
        "rental_until_ms": issued.rental_until_ms, "token_key_id": issued.token_key_id,
    })
}

/// The JSON a player needs to redeem a sale (`merchant buy --json` prints it).
pub fn sale_json(sale: &client::Sale) -> serde_json::Value {
    serde_json::json!({
        "voucher_id": sale.voucher_id,
        "receipt": hex::encode(&sale.receipt),
        "node_id": sale.node_id,
        "node_endpoint": sale.node_endpoint,
        "access_token": hex::encode(&sale.access_token),
        "access_expires_at_ms": sale.access_expires_at_ms,
        "token_key_id": sale.token_key_id,
        "media_ids": sale.media_ids,
        "rental_until_ms": sale.rental_until_ms,
    })
}

/// A points payment from the flags: the account named, or the one the authorization
/// file names. An account without an authorization is sent as it is (the engine refuses it).
fn points_payment(account: Option<&str>, authorization: Option<&std::path::Path>) -> anyhow::Result<Option<client::PointsPayment>> {
    let authorization = authorization.map(crate::common::spend::load).transpose()?;
    Ok(match (account, authorization) {
        (None, None) => None,
        (Some(account), authorization) => Some(client::PointsPayment { account: account.to_string(), authorization }),
        (None, Some(authorization)) => Some(client::PointsPayment::authorized(authorization)),
    })
}

pub async fn merchant(args: MerchantArgs) -> anyhow::Result<Outcome> {
    let cred = args.cred.as_ref().context("--cred FILE (the merchant's credential) is required")?;
    let credential = Credential::load(cred)?;
    let mut merchant = client::merchant(args.connect.channel().await?, credential);
    let request_id = args.request_id.clone().unwrap_or_else(|| fresh_request_id("cli"));
    let points = match &args.command {
        MerchantCommand::Reserve { points_account, spend_authorization, .. } | MerchantCommand::Buy { points_account, spend_authorization, .. } => {
            points_payment(points_account.as_deref(), spend_authorization.as_deref())?
        }
        _ => None,
    };
    // Read first: a sale file of another voucher changes nothing at the engine.
    let sale_file = match &args.command {
        MerchantCommand::Reissue { voucher, sale: Some(path), .. } => Some((path, sale_of(path, voucher)?)),
        _ => None,
    };
    let answer: Result<serde_json::Value, tonic::Status> = async {
        Ok(match &args.command {
            MerchantCommand::Reserve { media_ids, ttl_ms, rendition, rental_ms, .. } => {
                let reserved = merchant
                    .reserve(pb::ReserveRequest {
                        request_id,
                        media_ids: media_ids.clone(),
                        rendition: rendition.clone(),
                        ttl_ms: *ttl_ms,
                        points_account: points.as_ref().map(|p| p.account.clone()).unwrap_or_default(),
                        payment_ref: String::new(),
                        spend_authorization: points.as_ref().and_then(|p| p.authorization.clone()),
                        rental_ms: *rental_ms,
                    })
                    .await?
                    .into_inner();
                serde_json::json!({
                    "voucher_id": reserved.voucher_id, "expires_at_ms": reserved.expires_at_ms, "price_minor": reserved.price_minor,
                    "currency": reserved.currency, "rental_ms": reserved.rental_ms,
                })
            }
            MerchantCommand::Authorize { voucher } => {
                let authorized = merchant.authorize(pb::AuthorizeRequest { request_id, voucher_id: voucher.clone() }).await?.into_inner();
                serde_json::json!({
                    "voucher_id": authorized.voucher_id, "receipt": hex::encode(&authorized.receipt), "receipt_generation": authorized.receipt_generation,
                    "rental_until_ms": authorized.rental_until_ms,
                })
            }
            MerchantCommand::Void { voucher } => {
                let voided = merchant.void(pb::VoidRequest { request_id, voucher_id: voucher.clone() }).await?.into_inner();
                serde_json::json!({ "voucher_id": voided.voucher_id, "status": "Voided" })
            }
            MerchantCommand::Order(OrderCommand::Place { media, units }) => {
                let placed = merchant.place_order(pb::PlaceOrderRequest { request_id, media_id: media.clone(), units: *units }).await?.into_inner();
                serde_json::json!({ "order_id": placed.order_id, "media_id": media, "units": units })
            }
            MerchantCommand::Order(OrderCommand::Bind { order, unit, device, device_cert }) => {
                let request = pb::BindUnitRequest {
                    request_id,
                    order_id: order.clone(),
                    unit: *unit,
                    device_id: device.clone(),
                    device_public_key_der: Vec::new(),
                    device_cert_serial: device_cert.clone(),
                };
                let bound = merchant.bind_unit(request).await?.into_inner();
                serde_json::json!({ "order_id": order, "unit": unit, "device_id": device, "wrapped_media_key": hex::encode(&bound.wrapped_media_key) })
            }
            MerchantCommand::Order(OrderCommand::List { limit, cursor }) => {
                let (mut orders, mut next) = (Vec::new(), cursor.clone().unwrap_or_default());
                let wanted = usize::try_from(*limit).unwrap_or(usize::MAX);
                loop {
                    let asked = u32::try_from((wanted - orders.len()).min(projections::reads::ORDER_PAGE_MAX)).unwrap_or(u32::MAX);
                    let page = merchant.list_orders(pb::ListOrdersRequest { limit: asked, cursor: next }).await?.into_inner();
                    orders.extend(page.orders.into_iter().map(|order| {
                        serde_json::json!({
                            "order_id": order.order_id, "media_id": order.media_id, "units": order.units, "units_bound": order.units_bound,
                            "units_completed": order.units_completed, "price_per_unit_minor": order.price_per_unit_minor,
                            "currency": order.currency, "placed_at_ms": order.placed_at_ms,
                        })
                    }));
                    next = page.next_cursor;
                    if next.is_empty() || orders.len() >= wanted {
                        break;
                    }
                }
                serde_json::json!({ "orders": orders, "next_cursor": next })
            }
            MerchantCommand::Order(OrderCommand::Complete { order, unit }) => {
                merchant.complete_unit(pb::CompleteUnitRequest { request_id, order_id: order.clone(), unit: *unit }).await?;
                serde_json::json!({ "order_id": order, "unit": unit, "completed": true })
            }
            MerchantCommand::Refund { voucher, reason, chargeback } => {
                let request = pb::RefundRequest { request_id, voucher_id: voucher.clone(), reason: reason.clone(), chargeback: *chargeback };
                let refunded = merchant.refund(request).await?.into_inner();
                serde_json::json!({ "voucher_id": refunded.voucher_id, "status": refunded.status })
            }
            MerchantCommand::Issue { voucher, region } | MerchantCommand::Reissue { voucher, region, .. } => {
                let issued = merchant
                    .issue_voucher(pb::IssueVoucherRequest { request_id, voucher_id: voucher.clone(), region: region.clone().unwrap_or_default() })
                    .await?
                    .into_inner();
                issued_json(&issued)
            }
            MerchantCommand::Buy { media_ids, rental_ms, .. } => {
                sale_json(&client::buy_with(&mut merchant, &request_id, media_ids, "high", points.as_ref(), *rental_ms).await?)
            }
            MerchantCommand::Preview { media, region } => {
                let preview = merchant
                    .preview(pb::PreviewRequest { request_id, media_id: media.clone(), region: region.clone().unwrap_or_default() })
                    .await?
                    .into_inner();
                serde_json::json!({ "preview_id": preview.preview_id, "node_id": preview.node_id, "node_endpoint": preview.node_endpoint })
            }
            MerchantCommand::Get { voucher } => {
                let view = merchant.get_voucher(pb::GetVoucherRequest { voucher_id: voucher.clone() }).await?.into_inner();
                serde_json::json!({
                    "voucher_id": view.voucher_id, "merchant_id": view.merchant_id, "status": view.status, "media_ids": view.media_ids,
                    "node_id": view.node_id, "node_endpoint": view.node_endpoint, "expires_at_ms": view.expires_at_ms,
                    "delivered_media_ids": view.delivered_media_ids, "rental_until_ms": view.rental_until_ms, "rental_plays": view.rental_plays,
                })
            }
            MerchantCommand::List { set, status, limit, cursor } => {
                reads::merchant_list(&mut merchant, *set, status.as_deref(), *limit, cursor.as_deref()).await?
            }
            MerchantCommand::Statement { period } => reads::merchant_statement(&mut merchant, period).await?,
            MerchantCommand::RentalWindow { min_ms, max_ms } => {
                let answer =
                    merchant.set_rental_window(pb::SetRentalWindowRequest { request_id, window_ms_min: *min_ms, window_ms_max: *max_ms }).await?.into_inner();
                serde_json::json!({ "window_ms_min": answer.window_ms_min, "window_ms_max": answer.window_ms_max, "changed": answer.changed })
            }
        })
    }
    .await;
    match answer {
        Ok(value) => {
            if let Some((path, mut sale)) = sale_file {
                for key in ["node_id", "node_endpoint", "access_token", "access_expires_at_ms", "token_key_id"] {
                    sale[key] = value[key].clone();
                }
                crate::common::keys::write_private(path, format!("{sale}\n").as_bytes())?;
                eprintln!("brought {} up to date (0600: it holds the receipt)", path.display());
            }
            if let Some(out) = &args.out {
                crate::common::keys::write_private(out, format!("{value}\n").as_bytes())?;
                eprintln!("wrote {} (0600: it holds the receipt)", out.display());
            }
            Ok(Outcome::Done(value))
        }
        Err(status) => refused(status),
    }
}

#[derive(clap::Args, Debug)]
pub struct NodeCliArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The node's credential file (from `keys issue node`).
    #[arg(long)]
    pub cred: PathBuf,
    /// Where to serve players (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    #[arg(long, default_value_t = 64)]
    pub slots: u32,
    #[arg(long, default_value = "eu")]
    pub region: String,
    /// Where the node keeps its feed checkpoint.
    #[arg(long, default_value = "./vouchsafe-node")]
    pub data_dir: PathBuf,
    /// Bound of the media cache, in bytes.
    #[arg(long, default_value_t = crate::node::CACHE_BYTES_MAX_DEFAULT)]
    pub cache_bytes_max: u64,
    /// PEM certificate (leaf first, then intermediates) the node presents to players: with
    /// it the node serves players over TLS and announces an https:// endpoint.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

pub async fn node(args: NodeCliArgs) -> anyhow::Result<()> {
    // The node's credential goes to the engine, and players' grants and proofs come to the
    // node: each in plain text only on loopback unless asked.
    crate::common::plaintext::check_url(&args.connect.connect, args.connect.insecure_plaintext)?;
    let player_tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::common::tls::ServerIdentity::load(cert, key)?),
        _ => None,
    };
    crate::common::plaintext::check_listen(args.listen, player_tls.is_some(), args.connect.insecure_plaintext, "players")?;
    let node_args = crate::node::NodeArgs {
        connect: args.connect.connect.clone(),
        cred: Credential::load(&args.cred)?,
        listen: args.listen,
        slots_max: args.slots,
        region: args.region,
        data_dir: args.data_dir,
        cache_bytes_max: args.cache_bytes_max,
        engine_tls: args.connect.engine_tls()?,
        player_tls,
    };
    crate::node::run(node_args, crate::server::serve::terminate_signal()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_output_never_shows_a_receipt_or_an_access_token() {
        let sale = serde_json::json!({ "voucher_id": "v1", "receipt": "ab12cd34", "access_token": "ef56", "node_id": "n1" });
        let shown = human(&sale);
        assert!(shown.contains("v1") && shown.contains("n1"), "{shown}");
        assert!(!shown.contains("ab12cd34") && !shown.contains("ef56"), "{shown}");
    }
}
