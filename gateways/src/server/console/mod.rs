//! The read-only web console (issue 23 item 4): `serve --console-listen ADDR` serves pages
//! rendered on the server (axum, maud; no script) over the engine's own read functions, the
//! ones the gRPC read RPCs answer with (`Api::stats`, `list_vouchers`, `statement`,
//! `catalog_page`, `ledger`, `parties`, `totals_now`), so every figure on a page is what
//! the RPC answers at that moment; nothing here queries a projection itself.
//!
//! Sign-in (`/login`, a POSTed form with the credential's id and secret, or the credential
//! file uploaded) checks the credential with the front door's `Authenticator` (constant-time,
//! an unknown id and a wrong secret get one answer) and starts a session (`session`). The
//! operator sees every page; an auditor the royalty log, totals and ledger; a merchant only
//! its own vouchers and statement. Without a session every page redirects to `/login` and
//! shows no figure. Pages are GET and change nothing; the only POSTs are sign-in and
//! sign-out, refused from another origin, and the cookie is SameSite=Strict. Neither a
//! secret nor a session token is logged or shown.
//! Not here: the pages' contents (`pages`), the HTML (`view`).

mod pages;
pub mod session;
mod view;

use crate::server::api::Api;
use crate::server::front_door::{Authenticator, Identity};
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::response::{IntoResponse, Redirect, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use maud::{Markup, html};
use session::Sessions;
use std::sync::Arc;

/// The largest sign-in body (a form, or a credential file of two short lines).
pub const LOGIN_BODY_BYTES_MAX: usize = 8 * 1024;

/// What every answer carries: no script, no framing, no caching, no referrer to other sites.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's pages and who may see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    Overview,
    Nodes,
    Catalog,
    Merchants,
    Vouchers,
    Statement,
    Royalty,
    Totals,
    Ledger,
}

impl Page {
    pub const ALL: [Page; 9] =
        [Page::Overview, Page::Nodes, Page::Catalog, Page::Merchants, Page::Vouchers, Page::Statement, Page::Royalty, Page::Totals, Page::Ledger];

    pub fn path(self) -> &'static str {
        match self {
            Page::Overview => "/overview",
            Page::Nodes => "/nodes",
            Page::Catalog => "/catalog",
            Page::Merchants => "/merchants",
            Page::Vouchers => "/vouchers",
            Page::Statement => "/statement",
            Page::Royalty => "/royalty",
            Page::Totals => "/totals",
            Page::Ledger => "/ledger",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Page::Overview => "Overview",
            Page::Nodes => "Nodes",
            Page::Catalog => "Catalog",
            Page::Merchants => "Merchants",
            Page::Vouchers => "Vouchers",
            Page::Statement => "Statement",
            Page::Royalty => "Royalty log",
            Page::Totals => "Totals",
            Page::Ledger => "Ledger",
        }
    }

    /// The operator sees all; an auditor the royalty log, totals and ledger; a merchant its
    /// own vouchers and statement; a delivery node nothing.
    pub fn allowed(self, identity: &Identity) -> bool {
        match identity {
            Identity::Operator(_) => true,
            Identity::Auditor(_) => matches!(self, Page::Royalty | Page::Totals | Page::Ledger),
            Identity::Merchant(_) => matches!(self, Page::Vouchers | Page::Statement),
            Identity::Node(_) | Identity::Publisher(_) => false,
        }
    }

    /// Where a role lands after signing in.
    fn home(identity: &Identity) -> Option<Page> {
        Page::ALL.into_iter().find(|page| page.allowed(identity))
    }
}

/// What the console's handlers share.
pub struct Console {
    pub(super) api: Api,
    authenticator: Arc<Authenticator>,
    sessions: Sessions,
}

/// An HTML answer with its status.
fn html_response(status: StatusCode, markup: Markup) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response()
}

fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

impl Console {
    /// The signed-in identity allowed to see `page`, or the answer to give instead: a
    /// redirect to `/login` without a session, 403 for a role the page is not for.
    pub(super) async fn admit(&self, headers: &HeaderMap, page: Page) -> Result<Identity, Response> {
        let Some(token) = session::cookie_value(headers) else { return Err(to_login()) };
        let Some(identity) = self.sessions.identity(&token) else { return Err(to_login()) };
        // A party revoked since its sign-in loses its session at once.
        match self.authenticator.still_admitted(&identity).await {
            Ok(true) => {}
            Ok(false) => {
                self.sessions.end(&token);
                return Err(to_login());
            }
            Err(status) => return Err(status_page(Some(&identity), &status)),
        }
        if !page.allowed(&identity) {
            let message = format!("a {} may not see this page", identity.role());
            return Err(html_response(StatusCode::FORBIDDEN, view::message_page("Not for your role", Some(&identity), &message)));
        }
        Ok(identity)
    }
}

/// A refusal or failure of the read a page made, as the gRPC client would see it: the
/// status's message (which never holds a secret) and the matching HTTP status.
pub(super) fn status_page(identity: Option<&Identity>, status: &tonic::Status) -> Response {
    let code = match status.code() {
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => StatusCode::BAD_REQUEST,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::Unavailable | tonic::Code::ResourceExhausted => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    html_response(code, view::message_page("Cannot show this", identity, status.message()))
}

fn login_page(status: StatusCode, message: Option<&str>) -> Response {
    let body = html! {
        div.login {
            h1 { "Sign in" }
            p.note { "With a credential: its id and secret, or the credential file (" code { "keys init" } ", " code { "keys issue" } ")." }
            @if let Some(message) = message { p.bad data-message="" { (message) } }
            form method="post" action="/login" enctype="multipart/form-data" {
                label for="id" { "Credential id" }
                input #id type="text" name="id" autocomplete="username";
                label for="secret" { "Secret (64 hex digits)" }
                input #secret type="password" name="secret" autocomplete="current-password";
                label for="credential" { "or the credential file" }
                input #credential type="file" name="credential";
                p { button type="submit" { "Sign in" } }
            }
        }
    };
    html_response(status, view::layout("Sign in", None, None, false, body))
}

async fn login_form(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Some(identity) = session::cookie_value(&headers).and_then(|token| console.sessions.identity(&token)) {
        return Redirect::to(Page::home(&identity).map_or("/login", Page::path)).into_response();
    }
    login_page(StatusCode::OK, None)
}

/// One answer for every credential that does not sign in: unknown id, wrong secret,
/// revoked party.
const SIGN_IN_REFUSED: &str = "unknown credential id or wrong secret";
const SIGN_IN_MALFORMED: &str = "give a credential id and its 64-hex-digit secret, or a credential file of an id line and a secret line";

/// A POST from another site's page is refused (login CSRF): an `Origin` must be this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let host = headers.get(header::HOST).and_then(|host| host.to_str().ok()).unwrap_or_default();
    origin.to_str().ok().and_then(|origin| origin.split_once("://")).is_some_and(|(_, authority)| !host.is_empty() && authority == host)
}

/// The id and secret of a sign-in form (fields `id` and `secret`, or a file `credential`).
async fn credential_of(mut form: Multipart) -> Option<(String, zeroize::Zeroizing<String>)> {
    let (mut id, mut secret, mut file) = (String::new(), zeroize::Zeroizing::new(String::new()), zeroize::Zeroizing::new(String::new()));
    while let Ok(Some(field)) = form.next_field().await {
        let name = field.name().unwrap_or_default().to_string();
        let text = zeroize::Zeroizing::new(field.text().await.ok()?);
        match name.as_str() {
            "id" => id = text.trim().to_string(),
            "secret" => secret = zeroize::Zeroizing::new(text.trim().to_string()),
            "credential" => file = text,
            _ => return None,
        }
    }
    if !file.trim().is_empty() {
        let credential = crate::common::cred::Credential::parse(&file, "the credential file").ok()?;
        return Some((credential.id.clone(), zeroize::Zeroizing::new(hex::encode(credential.secret.expose()))));
    }
    let well_formed = !id.is_empty() && secret.len() == 64 && secret.bytes().all(|byte| byte.is_ascii_hexdigit());
    well_formed.then_some((id, secret))
}

async fn login(State(console): State<Arc<Console>>, headers: HeaderMap, form: Multipart) -> Response {
    if !same_origin(&headers) {
        return login_page(StatusCode::FORBIDDEN, Some("sign in from this console's own page"));
    }
    let Some((id, secret)) = credential_of(form).await else { return login_page(StatusCode::BAD_REQUEST, Some(SIGN_IN_MALFORMED)) };
    let identity = match console.authenticator.authenticate(&id, &secret) {
        Ok(identity) => identity,
        Err(status) if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::ResourceExhausted) => {
            return login_page(StatusCode::SERVICE_UNAVAILABLE, Some("the credential cannot be checked now; retry shortly"));
        }
        Err(_) => {
            tracing::info!("console sign-in refused");
            return login_page(StatusCode::UNAUTHORIZED, Some(SIGN_IN_REFUSED));
        }
    };
    let Some(home) = Page::home(&identity) else {
        return login_page(StatusCode::FORBIDDEN, Some("a delivery node credential has no console pages"));
    };
    // The id is a token (authenticate refuses any other); the secret is never logged.
    tracing::info!(role = identity.role(), id = view::identity_id(&identity), "console sign-in");
    let token = console.sessions.start(identity);
    let mut response = Redirect::to(home.path()).into_response();
    if let Ok(cookie) = HeaderValue::from_str(&session::set_cookie(&token)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn logout(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return login_page(StatusCode::FORBIDDEN, Some("sign out from this console's own page"));
    }
    if let Some(token) = session::cookie_value(&headers) {
        console.sessions.end(&token);
    }
    let mut response = Redirect::to("/login").into_response();
    if let Ok(cookie) = HeaderValue::from_str(&session::clear_cookie()) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn root(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match session::cookie_value(&headers).and_then(|token| console.sessions.identity(&token)).and_then(|identity| Page::home(&identity)) {
        Some(home) => Redirect::to(home.path()).into_response(),
        None => to_login(),
    }
}

async fn not_found() -> Response {
    html_response(StatusCode::NOT_FOUND, view::message_page("Not found", None, "no such page"))
}

async fn security_headers(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` on the
    // sign-in POST, which the origin check must refuse.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The console's routes over `api`, checking sign-ins with `authenticator`.
pub fn router(api: Api, authenticator: Arc<Authenticator>) -> axum::Router {
    use axum::routing::{get, post};
    let console = Arc::new(Console { api, authenticator, sessions: Sessions::default() });
    axum::Router::new()
        .route("/", get(root))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route(Page::Overview.path(), get(pages::overview))
        .route(Page::Nodes.path(), get(pages::nodes))
        .route(Page::Catalog.path(), get(pages::catalog))
        .route(Page::Merchants.path(), get(pages::merchants))
        .route(Page::Vouchers.path(), get(pages::vouchers))
        .route(Page::Statement.path(), get(pages::statement))
        .route(Page::Royalty.path(), get(pages::royalty))
        .route(Page::Totals.path(), get(pages::totals))
        .route(Page::Ledger.path(), get(pages::ledger))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(LOGIN_BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(console)
}

/// Serves the console on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Api,
    authenticator: Arc<Authenticator>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(api, authenticator)).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::ids::{MerchantId, NodeId};

    #[test]
    fn each_role_sees_its_pages_only() {
        let operator = Identity::Operator("op".into());
        let auditor = Identity::Auditor("a1".into());
        let merchant = Identity::Merchant(MerchantId("m1".into()));
        let node = Identity::Node(NodeId("n1".into()));
        assert!(Page::ALL.iter().all(|page| page.allowed(&operator)));
        let seen = |identity: &Identity| Page::ALL.into_iter().filter(|page| page.allowed(identity)).collect::<Vec<_>>();
        assert_eq!(seen(&auditor), vec![Page::Royalty, Page::Totals, Page::Ledger]);
        assert_eq!(seen(&merchant), vec![Page::Vouchers, Page::Statement]);
        assert!(seen(&node).is_empty());
        assert_eq!(
            (Page::home(&operator), Page::home(&auditor), Page::home(&merchant), Page::home(&node)),
            (Some(Page::Overview), Some(Page::Royalty), Some(Page::Vouchers), None)
        );
    }

    #[test]
    fn a_post_from_another_origin_is_refused() {
        let headers = |origin: Option<&str>| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
            if let Some(origin) = origin {
                headers.insert(header::ORIGIN, HeaderValue::from_str(origin).expect("header"));
            }
            headers
        };
        assert!(same_origin(&headers(Some("http://127.0.0.1:8080"))));
        assert!(same_origin(&headers(None)), "a form posted without Origin (older clients)");
        assert!(!same_origin(&headers(Some("http://evil.example"))));
        assert!(!same_origin(&headers(Some("null"))));
    }
}
