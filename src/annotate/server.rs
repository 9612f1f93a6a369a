//! The HTTP side: one page and a small JSON/PNG API, every request checked against the access token.
//!
//! - `GET /?token=T`: the page (`page.html`); it sends the token with every API call (`x-evosam-token`).
//! - `GET /api/state`: the open case (position, size, prompts; never the model) and starts its clock.
//! - `GET /api/image/{slot}`, `GET /api/mask/{slot}`: the open case's image and current mask overlay (PNG).
//! - `POST /api/prompt` `{slot, kind: box|click|undo|clear, x, y, x1, y1, label}`: the new mask overlay (PNG).
//! - `POST /api/accept` `{slot}`: accept and move on; the new state.
//!
//! Only the open case can be read or changed (others: 409; beyond the schedule: 404). Images come from the study's
//! case list by position: there is no path in the API and no upload. Bodies are limited to 4 KiB.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path as UrlPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::cases::StudyCase;
use super::engine::{empty_mask, overlay_png, Engine, Prepared, Prompt};
use super::session::{Edit, Session};

const PAGE: &str = include_str!("page.html");
/// Cases prepared ahead of the open one (encoder passes in the background).
const LOOKAHEAD: usize = 3;
/// How long a request waits for its case's encoder pass.
const PREPARE_WAIT: Duration = Duration::from_secs(300);

/// Everything the server shares between requests.
pub struct App {
    /// The access token.
    pub token: String,
    /// Models.
    pub engine: Engine,
    /// The study's cases.
    pub cases: Vec<StudyCase>,
    /// The annotator's session.
    pub session: Mutex<Session>,
    prep: Mutex<PrepState>,
    prep_cv: Condvar,
}

#[derive(Default)]
struct PrepState {
    ready: HashMap<usize, Arc<Prepared>>,
    failed: HashMap<usize, String>,
    current: usize,
    stop: bool,
}

/// An API error: a status and a message (plain text).
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        let code = if e.exit_code() == 2 {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError(code, e.to_string())
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

impl App {
    /// A new server state; call [`App::start_prefetch`] to prepare cases in the background.
    pub fn new(
        token: String,
        engine: Engine,
        cases: Vec<StudyCase>,
        session: Session,
    ) -> Arc<Self> {
        let current = session.current;
        Arc::new(Self {
            token,
            engine,
            cases,
            session: Mutex::new(session),
            prep: Mutex::new(PrepState {
                current,
                ..Default::default()
            }),
            prep_cv: Condvar::new(),
        })
    }

    /// The encoder thread: prepares the open case and the next `LOOKAHEAD` ones, in schedule order, and drops
    /// the prepared cases already accepted.
    pub fn start_prefetch(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let app = Arc::clone(self);
        std::thread::spawn(move || app.prefetch_loop())
    }

    /// Ask the encoder thread to stop (the tests' servers end; the binary's serves until the process ends).
    #[cfg(test)]
    pub fn stop(&self) {
        if let Ok(mut st) = self.prep.lock() {
            st.stop = true;
        }
        self.prep_cv.notify_all();
    }

    fn slots(&self) -> Vec<super::schedule::Slot> {
        self.session
            .lock()
            .map(|s| s.slots.clone())
            .unwrap_or_default()
    }

    fn prefetch_loop(&self) {
        let slots = self.slots();
        loop {
            let next = {
                let Ok(mut st) = self.prep.lock() else { return };
                loop {
                    if st.stop {
                        return;
                    }
                    let cur = st.current;
                    st.ready.retain(|&k, _| k >= cur);
                    let end = (cur + 1 + LOOKAHEAD).min(slots.len());
                    if let Some(k) =
                        (cur..end).find(|k| !st.ready.contains_key(k) && !st.failed.contains_key(k))
                    {
                        break k;
                    }
                    st = match self.prep_cv.wait(st) {
                        Ok(g) => g,
                        Err(_) => return,
                    };
                }
            };
            let slot = slots[next];
            let res = self.engine.prepare(&self.cases[slot.case], slot.arm);
            let Ok(mut st) = self.prep.lock() else { return };
            match res {
                Ok(p) => {
                    st.ready.insert(next, Arc::new(p));
                }
                Err(e) => {
                    eprintln!("case {}: {e}", self.cases[slot.case].id);
                    st.failed.insert(next, e.to_string());
                }
            }
            drop(st);
            self.prep_cv.notify_all();
        }
    }

    fn set_current(&self, current: usize) {
        if let Ok(mut st) = self.prep.lock() {
            st.current = current;
        }
        self.prep_cv.notify_all();
    }

    /// The prepared case of a slot, waiting for the encoder thread.
    fn prepared(&self, slot: usize) -> ApiResult<Arc<Prepared>> {
        let deadline = std::time::Instant::now() + PREPARE_WAIT;
        let mut st = self.prep.lock().map_err(|_| internal("lock"))?;
        loop {
            if let Some(p) = st.ready.get(&slot) {
                return Ok(Arc::clone(p));
            }
            if let Some(e) = st.failed.get(&slot) {
                return Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.clone()));
            }
            let now = std::time::Instant::now();
            if now >= deadline || st.stop {
                return Err(ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the case is still being prepared".into(),
                ));
            }
            st = self
                .prep_cv
                .wait_timeout(st, deadline - now)
                .map_err(|_| internal("lock"))?
                .0;
        }
    }
}

fn internal(what: &str) -> ApiError {
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("internal: {what}"),
    )
}

/// The router (token check included).
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/state", get(state))
        .route("/api/image/{slot}", get(image))
        .route("/api/mask/{slot}", get(mask))
        .route("/api/prompt", post(prompt))
        .route("/api/accept", post(accept))
        .layer(DefaultBodyLimit::max(4096))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&app),
            require_token,
        ))
        .with_state(app)
}

/// Constant-time string comparison.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn require_token(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let from_header = req
        .headers()
        .get("x-evosam-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token=").map(str::to_string))
    });
    match from_header.or(from_query) {
        Some(t) if same(&t, &app.token) => next.run(req).await,
        Some(_) => (StatusCode::FORBIDDEN, "wrong access token").into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            "missing access token: open the URL the server printed",
        )
            .into_response(),
    }
}

async fn page() -> Response {
    let mut r = Html(PAGE).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Run blocking work (locks, decoder passes) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| internal("worker"))?
}

/// What the page knows about the open case (never the model).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct StateOut {
    /// Annotator name.
    pub annotator: String,
    /// Cases in the schedule.
    pub total: usize,
    /// Accepted so far (= the open slot).
    pub slot: usize,
    /// Every case accepted.
    pub done: bool,
    /// Open case's width and height (0 when done).
    pub width: usize,
    /// Height.
    pub height: usize,
    /// Prompts of the open case: ["box", x0, y0, x1, y1] or ["click", x, y, label].
    pub prompts: Vec<Vec<serde_json::Value>>,
}

fn state_of(app: &App) -> ApiResult<StateOut> {
    let (slot, done) = {
        let s = app.session.lock().map_err(|_| internal("lock"))?;
        (s.current, s.done())
    };
    let (mut width, mut height) = (0, 0);
    if !done {
        let p = app.prepared(slot)?;
        width = p.meta.orig_w;
        height = p.meta.orig_h;
        let mut s = app.session.lock().map_err(|_| internal("lock"))?;
        let case = &app.cases[s.slots[slot].case];
        s.ensure_open(case, &p)?;
    }
    let s = app.session.lock().map_err(|_| internal("lock"))?;
    let prompts = s
        .prompts
        .iter()
        .map(|p| match p {
            Prompt::Box(b) => vec![
                "box".into(),
                b[0].into(),
                b[1].into(),
                b[2].into(),
                b[3].into(),
            ],
            Prompt::Click(xy, l) => vec!["click".into(), xy[0].into(), xy[1].into(), (*l).into()],
        })
        .collect();
    Ok(StateOut {
        annotator: s.annotator.clone(),
        total: s.slots.len(),
        slot,
        done,
        width,
        height,
        prompts,
    })
}

async fn state(State(app): State<Arc<App>>) -> ApiResult<Json<StateOut>> {
    blocking(move || state_of(&app)).await.map(Json)
}

/// The open slot, or 404 (beyond the schedule) / 409 (another slot).
fn check_slot(app: &App, slot: usize) -> ApiResult<()> {
    let s = app.session.lock().map_err(|_| internal("lock"))?;
    if slot >= s.slots.len() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("unknown case {slot} (the schedule has {})", s.slots.len()),
        ));
    }
    if slot != s.current {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("case {slot} is not the open case ({})", s.current),
        ));
    }
    Ok(())
}

fn png(bytes: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response()
}

async fn image(State(app): State<Arc<App>>, UrlPath(slot): UrlPath<usize>) -> ApiResult<Response> {
    blocking(move || {
        check_slot(&app, slot)?;
        Ok(png(app.prepared(slot)?.png.clone()))
    })
    .await
}

fn mask_png(mask: Option<Vec<bool>>, p: &Prepared) -> ApiResult<Vec<u8>> {
    let m = mask.unwrap_or_else(|| empty_mask(&p.meta));
    Ok(overlay_png(&m, p.meta.orig_w, p.meta.orig_h)?)
}

async fn mask(State(app): State<Arc<App>>, UrlPath(slot): UrlPath<usize>) -> ApiResult<Response> {
    blocking(move || {
        check_slot(&app, slot)?;
        let p = app.prepared(slot)?;
        let m = app
            .session
            .lock()
            .map_err(|_| internal("lock"))?
            .current_mask(&app.engine, &p)?;
        Ok(png(mask_png(m, &p)?))
    })
    .await
}

/// `POST /api/prompt` body.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PromptIn {
    /// The open slot.
    pub slot: usize,
    /// "box", "click", "undo" or "clear".
    pub kind: String,
    /// Box x0 / click x (original pixels).
    pub x: Option<f64>,
    /// Box y0 / click y.
    pub y: Option<f64>,
    /// Box x1.
    pub x1: Option<f64>,
    /// Box y1.
    pub y1: Option<f64>,
    /// Click label (1 foreground, 0 background).
    pub label: Option<u8>,
}

/// Check a prompt against the image size.
pub fn parse_edit(q: &PromptIn, w: usize, h: usize) -> ApiResult<Edit> {
    let need = |v: Option<f64>, n: &str| -> ApiResult<f64> {
        v.filter(|x| x.is_finite())
            .ok_or_else(|| bad(format!("{} needs a finite `{n}`", q.kind)))
    };
    let (wf, hf) = (w as f64, h as f64);
    match q.kind.as_str() {
        "box" => {
            let b = [
                need(q.x, "x")?,
                need(q.y, "y")?,
                need(q.x1, "x1")?,
                need(q.y1, "y1")?,
            ];
            if !(0.0 <= b[0]
                && b[0] < b[2]
                && b[2] <= wf
                && 0.0 <= b[1]
                && b[1] < b[3]
                && b[3] <= hf)
            {
                return Err(bad(format!(
                    "box {:?} must satisfy 0 <= x < x1 <= {w} and 0 <= y < y1 <= {h}",
                    b
                )));
            }
            Ok(Edit::Box(b))
        }
        "click" => {
            let (x, y) = (need(q.x, "x")?, need(q.y, "y")?);
            if !(0.0 <= x && x < wf && 0.0 <= y && y < hf) {
                return Err(bad(format!(
                    "click ({x}, {y}) is outside the {w}x{h} image"
                )));
            }
            match q.label {
                Some(l @ (0 | 1)) => Ok(Edit::Click([x, y], l)),
                _ => Err(bad("click needs `label` 1 (foreground) or 0 (background)")),
            }
        }
        "undo" => Ok(Edit::Undo),
        "clear" => Ok(Edit::Clear),
        k => Err(bad(format!(
            "unknown prompt kind `{k}`: box, click, undo or clear"
        ))),
    }
}

async fn prompt(State(app): State<Arc<App>>, Json(q): Json<PromptIn>) -> ApiResult<Response> {
    blocking(move || {
        check_slot(&app, q.slot)?;
        let p = app.prepared(q.slot)?;
        let edit = parse_edit(&q, p.meta.orig_w, p.meta.orig_h)?;
        let mut s = app.session.lock().map_err(|_| internal("lock"))?;
        if s.current != q.slot {
            return Err(ApiError(
                StatusCode::CONFLICT,
                "the case was accepted meanwhile".into(),
            ));
        }
        let case = &app.cases[s.slots[q.slot].case];
        let m = s.edit(&app.engine, case, &p, edit)?;
        let n = s.prompts.len();
        drop(s);
        let mut r = png(mask_png(m, &p)?);
        r.headers_mut().insert("x-prompts", HeaderValue::from(n));
        Ok(r)
    })
    .await
}

/// `POST /api/accept` body.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptIn {
    /// The open slot.
    pub slot: usize,
}

async fn accept(State(app): State<Arc<App>>, Json(q): Json<AcceptIn>) -> ApiResult<Json<StateOut>> {
    blocking(move || {
        check_slot(&app, q.slot)?;
        let p = app.prepared(q.slot)?;
        let next = {
            let mut s = app.session.lock().map_err(|_| internal("lock"))?;
            let case = &app.cases[s.slots[q.slot].case];
            s.accept(&app.engine, case, &p)?;
            s.current
        };
        app.set_current(next);
        state_of(&app)
    })
    .await
    .map(Json)
}

/// Bind, call `ready` with the address, and serve until the process ends.
pub fn serve(app: Arc<App>, addr: SocketAddr, ready: impl FnOnce(SocketAddr)) -> crate::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| crate::Error::internal(format!("tokio runtime: {e}")))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| crate::Error::input(format!("cannot listen on {addr}: {e}")))?;
        let bound = listener
            .local_addr()
            .map_err(|e| crate::Error::internal(e.to_string()))?;
        ready(bound);
        axum::serve(listener, router(app))
            .await
            .map_err(|e| crate::Error::internal(format!("server: {e}")))
    })
}
