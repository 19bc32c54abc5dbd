//! The HTTP side of the server: the dashboard (server-rendered HTML, no script: queues with
//! their flow limits, jobs with their progress, schedules), `/metrics`,
//! `/healthz` and `/readyz`. It is an admin client of the engine like any protocol
//! connection ([`admin::AdminConn`]), so it sees exactly what `qd` clients see and needs no
//! access to the core. Off unless `ServerConfig::http` is set; started by the composition
//! root beside the protocol listener and stopped by the same token.
//!
//! - `admin.rs`: the in-process admin connection;
//! - `session.rs`: sessions, login, CSRF;
//! - `pages.rs` / `actions.rs`: the GET pages and the POST actions;
//! - `observe.rs`: metrics and health;
//! - `html.rs`: escaping, page frame, stylesheet.

mod actions;
mod admin;
mod html;
mod observe;
mod pages;
mod session;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use admin::{AdminConn, AdminError};

use crate::engine::Command;
use session::{Session, Sessions};

/// What every HTTP handler shares.
#[derive(Debug)]
pub struct Dashboard {
    admin: AdminConn,
    sessions: Sessions,
    /// The admin secret; when set, only logged-in sessions see the dashboard.
    secret: Option<Vec<u8>>,
}

type Shared = Arc<Dashboard>;

/// A bound HTTP listener, not yet serving.
#[derive(Debug)]
pub struct HttpListener {
    listener: TcpListener,
}

impl HttpListener {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> io::Result<HttpListener> {
        Ok(HttpListener { listener: TcpListener::bind(addr).await? })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, asking the engine over `commands`.
    pub async fn run(
        self,
        commands: mpsc::Sender<Command>,
        secret: Option<Vec<u8>>,
        shutdown: CancellationToken,
    ) {
        let dashboard = Arc::new(Dashboard {
            admin: AdminConn::new(commands),
            sessions: Sessions::default(),
            secret,
        });
        let served = axum::serve(self.listener, router(dashboard))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the HTTP listener stopped");
        }
    }
}

/// Every route of the HTTP side.
fn router(d: Shared) -> Router {
    Router::new()
        .route("/", get(queues_page))
        .route("/queues/{name}", get(queue_page))
        .route("/queues/{name}/{action}", post(queue_action))
        .route("/jobs/{id}", get(job_page))
        .route("/jobs/{id}/{action}", post(job_action))
        .route("/schedules", get(schedules_page))
        .route("/schedules/{name}/{action}", post(schedule_action))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(d)
}

/// Security headers on every page: no framing, no scripts, forms only to this site.
fn html_response(
    status: StatusCode,
    body: axum::response::Html<String>,
    cookie: Option<String>,
) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::SET_COOKIE, c);
    }
    resp
}

/// The session of a page view: the existing one, a new one when no secret is set, or a
/// redirect to the login page.
fn session_for_page(
    d: &Dashboard,
    headers: &HeaderMap,
) -> Result<(Session, Option<String>), Box<Response>> {
    if let Some(s) = d.sessions.get(headers) {
        return Ok((s, None));
    }
    if d.secret.is_some() {
        return Err(Box::new(Redirect::to("/login").into_response()));
    }
    let s = d.sessions.create();
    let cookie = session::set_cookie(&s);
    Ok((s, Some(cookie)))
}

/// The session of a POST, which must carry its CSRF token; else 403 (or the login page).
fn session_for_post(
    d: &Dashboard,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Session, Box<Response>> {
    let Some(s) = d.sessions.get(headers) else {
        if d.secret.is_some() {
            return Err(Box::new(Redirect::to("/login").into_response()));
        }
        return Err(Box::new(forbidden("no session: reload the page and try again")));
    };
    if !session::csrf_ok(&s, form.get("csrf").map(String::as_str), headers) {
        return Err(Box::new(forbidden("the form's token is missing or stale, or the request came from another site: reload the page and try again")));
    }
    Ok(s)
}

fn forbidden(why: &str) -> Response {
    html_response(StatusCode::FORBIDDEN, html::error_page(why), None)
}

fn crumbs(parts: &[(&str, Option<String>)]) -> String {
    let mut out = String::from("<a href=\"/\">Queues</a>");
    for (label, link) in parts {
        out.push_str(" / ");
        match link {
            Some(l) => {
                out.push_str(&format!("<a href=\"{}\">{}</a>", html::esc(l), html::esc(label)))
            }
            None => out.push_str(&html::esc(label)),
        }
    }
    out
}

async fn queues_page(
    State(d): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (s, cookie) = match session_for_page(&d, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let body = pages::queues(&d, &s, None).await;
    let page = html::page("Queues", &crumbs(&[]), q.get("notice").map(String::as_str), &body);
    html_response(StatusCode::OK, page, cookie)
}

async fn queue_page(
    State(d): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (s, cookie) = match session_for_page(&d, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let body = pages::queue(&d, &s, &name, &q).await;
    let page =
        html::page(&name, &crumbs(&[(&name, None)]), q.get("notice").map(String::as_str), &body);
    html_response(StatusCode::OK, page, cookie)
}

async fn job_page(
    State(d): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (s, cookie) = match session_for_page(&d, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let (body, queue) = pages::job(&d, &s, id).await;
    let mut trail = Vec::new();
    if let Some(q) = &queue {
        trail.push((q.as_str(), Some(format!("/queues/{}", html::url(q)))));
    }
    let label = format!("#{id}");
    trail.push((label.as_str(), None));
    let page = html::page(
        &format!("Job #{id}"),
        &crumbs(&trail),
        q.get("notice").map(String::as_str),
        &body,
    );
    html_response(StatusCode::OK, page, cookie)
}

async fn schedules_page(
    State(d): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (s, cookie) = match session_for_page(&d, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let body = pages::schedules(&d, &s).await;
    let page = html::page(
        "Schedules",
        &crumbs(&[("Schedules", None)]),
        q.get("notice").map(String::as_str),
        &body,
    );
    html_response(StatusCode::OK, page, cookie)
}

fn after_action(outcome: actions::Outcome) -> Response {
    match outcome {
        actions::Outcome::Done { back, notice } => {
            let sep = if back.contains('?') { '&' } else { '?' };
            Redirect::to(&format!("{back}{sep}notice={}", html::url(&notice))).into_response()
        }
        actions::Outcome::Confirm(body) => {
            html_response(StatusCode::OK, html::page("Confirm", &crumbs(&[]), None, &body), None)
        }
        actions::Outcome::Failed(message) => {
            html_response(StatusCode::BAD_GATEWAY, html::error_page(&message), None)
        }
    }
}

async fn queue_action(
    State(d): State<Shared>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let s = match session_for_post(&d, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    after_action(actions::on_queue(&d, &s.csrf, &name, &action, &form).await)
}

async fn job_action(
    State(d): State<Shared>,
    headers: HeaderMap,
    Path((id, action)): Path<(u64, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let s = match session_for_post(&d, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    after_action(actions::on_job(&d, &s.csrf, id, &action, &form).await)
}

async fn schedule_action(
    State(d): State<Shared>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let s = match session_for_post(&d, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    after_action(actions::on_schedule(&d, &s.csrf, &name, &action, &form).await)
}

fn login_form(error: Option<&str>) -> axum::response::Html<String> {
    let error = error.map(|e| format!("<p class=error>{}</p>", html::esc(e))).unwrap_or_default();
    html::page(
        "Log in",
        "",
        None,
        &format!(
            "<form method=post action=\"/login\" class=login><h1>Log in</h1>{error}\
             <p class=muted>This server has an admin secret. Enter it to see the dashboard.</p>\
             <p><input type=password name=secret autofocus autocomplete=current-password></p>\
             <p><button class=primary>Log in</button></p></form>"
        ),
    )
}

async fn login_page(State(d): State<Shared>) -> Response {
    if d.secret.is_none() {
        return Redirect::to("/").into_response();
    }
    html_response(StatusCode::OK, login_form(None), None)
}

async fn login(
    State(d): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some(secret) = &d.secret else { return Redirect::to("/").into_response() };
    // No session yet to hold a token: the login form relies on SameSite and the origin check.
    if !session::same_origin(&headers) {
        return forbidden("log in from the dashboard's own page");
    }
    let given = form.get("secret").map(String::as_bytes).unwrap_or_default();
    if !session::secret_matches(secret, given) {
        tracing::warn!("dashboard login with a wrong secret");
        return html_response(
            StatusCode::UNAUTHORIZED,
            login_form(Some("That is not the admin secret.")),
            None,
        );
    }
    let s = d.sessions.create();
    let mut resp = Redirect::to("/").into_response();
    if let Ok(c) = HeaderValue::from_str(&session::set_cookie(&s)) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

async fn logout(
    State(d): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Ok(s) = session_for_post(&d, &headers, &form) {
        d.sessions.remove(&s.id);
    }
    let mut resp = Redirect::to("/login").into_response();
    if let Ok(c) = HeaderValue::from_str(&session::clear_cookie()) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

async fn metrics(State(d): State<Shared>) -> Response {
    match observe::metrics_text(&d).await {
        Ok(text) => (
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

async fn readyz(State(d): State<Shared>) -> Response {
    match observe::ready(&d).await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response()
        }
    }
}
