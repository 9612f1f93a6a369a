//! The API end to end on a tiny random model: token, input validation, logging, resume.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use super::cases::from_folder;
use super::engine::{Arm, Engine};
use super::events::{log_path, Action, EventLog};
use super::schedule::Design;
use super::server::{router, App, StateOut};
use super::session::{record, Session};
use crate::model::{LiteMedSam, LiteMedSamConfig};

const TOKEN: &str = "0123456789abcdef";

/// Two 40x30 images with a square foreground each.
fn image_folder(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (im, ms) = (dir.join("images"), dir.join("masks"));
    std::fs::create_dir_all(&im).unwrap();
    std::fs::create_dir_all(&ms).unwrap();
    for (k, name) in ["p1", "p2"].iter().enumerate() {
        let mut img = image::RgbImage::new(40, 30);
        let mut m = image::GrayImage::new(40, 30);
        for y in 8..20 {
            for x in (10 + k)..(25 + k) {
                img.put_pixel(x as u32, y, image::Rgb([200, 80, 60]));
                m.put_pixel(x as u32, y, image::Luma([255]));
            }
        }
        img.save(im.join(format!("{name}.png"))).unwrap();
        m.save(ms.join(format!("{name}.png"))).unwrap();
    }
    (im, ms)
}

fn app(study: &std::path::Path, data: &std::path::Path) -> Arc<App> {
    let (im, ms) = (data.join("images"), data.join("masks"));
    let cases = from_folder(&im, Some(&ms)).unwrap();
    let want = record(7, Design::Split, ["evosam".into(), "base".into()], &cases);
    let session = Session::start(study, "ann", &want).unwrap();
    let model =
        LiteMedSam::random(&LiteMedSamConfig::tiny(), 3, &candle_core::Device::Cpu).unwrap();
    let engine = Engine {
        model,
        arms: [
            Arm {
                label: "evosam".into(),
                experts: None,
            },
            Arm {
                label: "base".into(),
                experts: None,
            },
        ],
        cache: None,
        mask_prompt: true,
    };
    let app = App::new(TOKEN.into(), engine, cases, session);
    app.start_prefetch();
    app
}

async fn call(
    app: &Arc<App>,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Vec<u8>) {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        b = b.header("x-evosam-token", t);
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let req = b.body(Body::from(body.unwrap_or("").to_string())).unwrap();
    let resp = router(Arc::clone(app)).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, bytes.to_vec())
}

/// `GET uri` with the token.
async fn get(app: &Arc<App>, uri: &str) -> (StatusCode, Vec<u8>) {
    call(app, "GET", uri, Some(TOKEN), None).await
}

/// `POST /api/<what>` with the token and a JSON body.
async fn post(app: &Arc<App>, what: &str, body: &str) -> (StatusCode, Vec<u8>) {
    call(
        app,
        "POST",
        &format!("/api/{what}"),
        Some(TOKEN),
        Some(body),
    )
    .await
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn every_request_needs_the_token() {
    let (d, s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    image_folder(d.path());
    let app = app(s.path(), d.path());
    rt().block_on(async {
        for uri in ["/", "/api/state", "/api/image/0", "/api/mask/0"] {
            assert_eq!(
                call(&app, "GET", uri, None, None).await.0,
                StatusCode::UNAUTHORIZED,
                "{uri}"
            );
            assert_eq!(
                call(&app, "GET", uri, Some("nope"), None).await.0,
                StatusCode::FORBIDDEN,
                "{uri}"
            );
        }
        let body = r#"{"slot":0,"kind":"click","x":1,"y":1,"label":1}"#;
        assert_eq!(
            call(&app, "POST", "/api/prompt", None, Some(body)).await.0,
            StatusCode::UNAUTHORIZED
        );
        let (st, page) = call(&app, "GET", &format!("/?token={TOKEN}"), None, None).await;
        assert_eq!(st, StatusCode::OK);
        assert!(String::from_utf8(page).unwrap().contains("/api/prompt"));
        assert_eq!(get(&app, "/api/state").await.0, StatusCode::OK);
    });
    app.stop();
}

#[test]
fn bad_input_is_a_4xx_and_logs_nothing() {
    let (d, s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    image_folder(d.path());
    let app = app(s.path(), d.path());
    rt().block_on(async {
        for body in [
            r#"{"slot":0,"kind":"click","x":40,"y":1,"label":1}"#,
            r#"{"slot":0,"kind":"click","x":-0.5,"y":1,"label":1}"#,
            r#"{"slot":0,"kind":"click","x":3,"y":30,"label":1}"#,
            r#"{"slot":0,"kind":"click","x":3,"y":3,"label":2}"#,
            r#"{"slot":0,"kind":"click","x":3,"y":3}"#,
            r#"{"slot":0,"kind":"box","x":9,"y":1,"x1":5,"y1":8}"#,
            r#"{"slot":0,"kind":"box","x":1,"y":1,"x1":41,"y1":8}"#,
            r#"{"slot":0,"kind":"lasso","x":1,"y":1}"#,
        ] {
            let st = post(&app, "prompt", body).await.0;
            assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
        }
        for body in [
            r#"{"slot":0,"kind":"click","x":1e999,"y":1,"label":1}"#,
            r#"{"slot":0,"kind":"click","path":"../../etc/passwd"}"#,
            r#"not json"#,
        ] {
            let st = post(&app, "prompt", body).await.0;
            assert!(st.is_client_error(), "{body}: {st}");
        }
        let big = format!(r#"{{"slot":0,"kind":"clear","x":{}}}"#, "1".repeat(5000));
        assert_eq!(
            post(&app, "prompt", &big).await.0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        // unknown case, another case than the open one
        for (what, body, want) in [
            (
                "prompt",
                r#"{"slot":99,"kind":"clear"}"#,
                StatusCode::NOT_FOUND,
            ),
            (
                "prompt",
                r#"{"slot":1,"kind":"clear"}"#,
                StatusCode::CONFLICT,
            ),
            ("accept", r#"{"slot":5}"#, StatusCode::NOT_FOUND),
        ] {
            assert_eq!(post(&app, what, body).await.0, want, "{what} {body}");
        }
        for (uri, want) in [
            ("/api/image/7", StatusCode::NOT_FOUND),
            ("/api/image/1", StatusCode::CONFLICT),
            ("/api/image/..%2F..%2Fetc%2Fpasswd", StatusCode::BAD_REQUEST),
            ("/api/image/-1", StatusCode::BAD_REQUEST),
            ("/etc/passwd", StatusCode::NOT_FOUND),
        ] {
            assert_eq!(get(&app, uri).await.0, want, "{uri}");
        }
    });
    app.stop();
    let (_, evs) = EventLog::open(&log_path(s.path(), "ann")).unwrap();
    assert!(evs.iter().all(|e| !e.action.is_prompt()), "{evs:?}");
}

#[test]
fn prompts_are_logged_and_a_restart_continues_where_the_annotator_stopped() {
    let (d, s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    image_folder(d.path());
    let app1 = app(s.path(), d.path());
    let first_case;
    rt().block_on(async {
        let (st, b) = get(&app1, "/api/state").await;
        assert_eq!(st, StatusCode::OK);
        let state: StateOut = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            (
                state.slot,
                state.total,
                state.width,
                state.height,
                state.done
            ),
            (0, 2, 40, 30, false)
        );
        let (st, img) = get(&app1, "/api/image/0").await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(image::load_from_memory(&img).unwrap().width(), 40);
        for b in [
            r#"{"slot":0,"kind":"box","x":9.5,"y":7,"x1":26,"y1":21}"#,
            r#"{"slot":0,"kind":"click","x":15,"y":12,"label":1}"#,
            r#"{"slot":0,"kind":"click","x":2,"y":2,"label":0}"#,
            r#"{"slot":0,"kind":"undo"}"#,
        ] {
            let (st, png) = post(&app1, "prompt", b).await;
            assert_eq!(st, StatusCode::OK, "{b}: {}", String::from_utf8_lossy(&png));
            let m = image::load_from_memory(&png).unwrap();
            assert_eq!((m.width(), m.height()), (40, 30));
        }
        let (st, b) = post(&app1, "accept", r#"{"slot":0}"#).await;
        assert_eq!(st, StatusCode::OK);
        let state: StateOut = serde_json::from_slice(&b).unwrap();
        assert_eq!(state.slot, 1);
        let (st, _) = post(
            &app1,
            "prompt",
            r#"{"slot":1,"kind":"click","x":20,"y":14,"label":1}"#,
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        // the accepted case cannot be changed any more
        assert_eq!(
            post(&app1, "prompt", r#"{"slot":0,"kind":"clear"}"#)
                .await
                .0,
            StatusCode::CONFLICT
        );
    });
    {
        let sess = app1.session.lock().unwrap();
        first_case = sess.slots[0].case;
    }
    app1.stop();
    drop(app1);
    let (_, evs) = EventLog::open(&log_path(s.path(), "ann")).unwrap();
    let actions: Vec<Action> = evs.iter().map(|e| e.action).collect();
    use Action::*;
    assert_eq!(
        actions,
        [Open, Box, Click, Click, Undo, Accept, Open, Click]
    );
    let names = ["p1", "p2"];
    assert_eq!(evs[0].case, names[first_case]);
    assert_eq!(
        (evs[1].x, evs[1].y, evs[1].x1, evs[1].y1),
        (Some(9.5), Some(7.0), Some(26.0), Some(21.0))
    );
    assert_eq!(
        (evs[3].x, evs[3].y, evs[3].label),
        (Some(2.0), Some(2.0), Some(0))
    );
    assert_eq!(evs[4].n_prompts, 2);
    assert!(evs[1..6]
        .iter()
        .all(|e| e.dice.is_some_and(|d| (0.0..=1.0).contains(&d))));
    assert!(evs
        .windows(2)
        .take(5)
        .all(|w| w[1].t_case_s >= w[0].t_case_s));
    assert!(evs
        .iter()
        .all(|e| ["evosam", "base"].contains(&e.model.as_str())));
    let cases = std::fs::read_to_string(s.path().join("cases.csv")).unwrap();
    assert_eq!(cases.lines().count(), 2, "{cases}");
    assert!(s.path().join("events.parquet").is_file());

    // restart: the second case is open again with its click
    let app2 = app(s.path(), d.path());
    rt().block_on(async {
        let (_, b) = get(&app2, "/api/state").await;
        let state: StateOut = serde_json::from_slice(&b).unwrap();
        assert_eq!(state.slot, 1);
        assert_eq!(state.prompts.len(), 1);
        assert_eq!(get(&app2, "/api/mask/1").await.0, StatusCode::OK);
        let (st, b) = post(&app2, "accept", r#"{"slot":1}"#).await;
        assert_eq!(st, StatusCode::OK);
        let state: StateOut = serde_json::from_slice(&b).unwrap();
        assert!(state.done);
        assert_eq!(
            post(&app2, "prompt", r#"{"slot":1,"kind":"clear"}"#)
                .await
                .0,
            StatusCode::CONFLICT
        );
    });
    app2.stop();
    let (_, evs) = EventLog::open(&log_path(s.path(), "ann")).unwrap();
    let tail: Vec<Action> = evs[8..].iter().map(|e| e.action).collect();
    assert_eq!(tail, [Resume, Accept]);
    assert_eq!(evs[9].n_prompts, 1);
    assert!(evs[9].t_case_s >= evs[7].t_case_s);
    // another design for the same folder is refused
    let cases = from_folder(&d.path().join("images"), None).unwrap();
    let other = record(8, Design::Split, ["evosam".into(), "base".into()], &cases);
    for name in ["ann", "../x"] {
        let e = Session::start(s.path(), name, &other).err().unwrap();
        assert_eq!(e.exit_code(), 2, "{name}: {e}");
    }
}
