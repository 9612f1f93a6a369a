//! `evosam annotate` in a real browser: Debian's chromium driven through chromedriver (W3C WebDriver over plain
//! HTTP on localhost) loads the page served by the real binary on three Kvasir-SEG polyps, draws a box, adds a
//! foreground and a background click, accepts, and checks the event log and that the mask changed after each
//! prompt. The screenshot lands in `target/annotate-browser/page.png`.
//!
//! Needs `chromium` + `chromedriver` on PATH (`.ci/run` installs them with scripts/browser-deps.sh), the
//! LiteMedSAM weights (fetched into $EVOSAM_HOME) and ../shared/data.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use candle_core::Device;
use serde_json::{json, Value};

use evosam::model::LiteMedSam;
use evosam::model::{Adapter, LoraConfig};
use evosam::strategy::evosam::birth::Birth;
use evosam::strategy::evosam::{pooled_features, ExpertSet, Routing};

const N_IMAGES: usize = 3;

fn kvasir() -> PathBuf {
    let root = std::env::var("EVOSAM_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let k = root.join("polyp/Kvasir-SEG");
    assert!(
        k.join("images").is_dir(),
        "{}: Kvasir-SEG not found (needs ../shared/data)",
        k.display()
    );
    k
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The first images of Kvasir-SEG (by name) and their masks, linked into a study folder.
fn study_images(tmp: &Path) -> (PathBuf, PathBuf) {
    let k = kvasir();
    let (im, ms) = (tmp.join("images"), tmp.join("masks"));
    std::fs::create_dir_all(&im).unwrap();
    std::fs::create_dir_all(&ms).unwrap();
    let mut names: Vec<PathBuf> = std::fs::read_dir(k.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names.iter().take(N_IMAGES) {
        let n = p.file_name().unwrap();
        std::os::unix::fs::symlink(p, im.join(n)).unwrap();
        std::os::unix::fs::symlink(k.join("masks").join(n), ms.join(n)).unwrap();
    }
    (im, ms)
}

/// An EvoSAM expert folder with one expert (decoder LoRA with small random B) whose matcher learned the study's
/// images: the evosam arm really differs from the base model.
fn expert_folder(tmp: &Path, images: &Path) -> PathBuf {
    let weights = evosam::weights::resolve_weights(None).unwrap();
    let sha = evosam::weights::sha256_file(&weights).unwrap();
    let model = LiteMedSam::from_pth(&weights, &Device::Cpu).unwrap();
    let mut feats = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for p in files {
        let img = evosam::preprocess::load_image(&p).unwrap();
        let (x, _) = evosam::preprocess::to_model_input(&img, 256).unwrap();
        let emb = model.encode(&x.unsqueeze(0).unwrap()).unwrap();
        feats.extend(pooled_features(&emb).unwrap());
    }
    let cfg = LoraConfig {
        rank: 4,
        alpha: 4.0,
        targets: vec!["mask_decoder.transformer".into()],
    };
    let ad = Adapter::new(&model, &cfg, 1).unwrap();
    for v in ad.vars() {
        let t = (v.as_tensor().randn_like(0.0, 0.05).unwrap())
            .to_dtype(v.dtype())
            .unwrap();
        v.set(&t).unwrap();
    }
    let mut set = ExpertSet::new(
        Routing::Matcher,
        256,
        Default::default(),
        Default::default(),
    )
    .unwrap();
    set.push("kvasir", ad, Birth::default(), &feats).unwrap();
    let dir = tmp.join("experts");
    std::fs::create_dir_all(&dir).unwrap();
    set.save(&dir, &sha).unwrap();
    dir
}

struct Driver {
    http: reqwest::Client,
    base: String,
    rt: tokio::runtime::Runtime,
}

impl Driver {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{}", self.base, path);
        self.rt.block_on(async {
            let req = match method {
                "GET" => self.http.get(&url),
                "DELETE" => self.http.delete(&url),
                _ => self.http.post(&url),
            };
            let req = match body {
                Some(b) => req
                    .header("content-type", "application/json")
                    .body(b.to_string()),
                None => req,
            };
            let resp = req
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            let status = resp.status();
            let text = resp.text().await.unwrap();
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            assert!(status.is_success(), "{method} {path}: {status}: {text}");
            v["value"].clone()
        })
    }
}

fn js(d: &Driver, sid: &str, script: &str) -> Value {
    d.call(
        "POST",
        &format!("/session/{sid}/execute/sync"),
        Some(json!({"script": script, "args": []})),
    )
}

fn wait_for(d: &Driver, sid: &str, cond: &str, what: &str, secs: u64) {
    let t0 = Instant::now();
    loop {
        if js(d, sid, &format!("return !!({cond});")) == Value::Bool(true) {
            return;
        }
        let err = js(d, sid, "return window.evosam ? window.evosam.error : ''");
        assert!(
            err.as_str().unwrap_or("").is_empty(),
            "page error while waiting for {what}: {err}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Client (viewport) coordinates of an image pixel on the page.
fn client(d: &Driver, sid: &str, x: f64, y: f64) -> (i64, i64) {
    let v = js(d, sid, &format!("return window.evosam.toClient({x}, {y});"));
    (
        v[0].as_f64().unwrap().round() as i64,
        v[1].as_f64().unwrap().round() as i64,
    )
}

fn pointer(d: &Driver, sid: &str, from: (i64, i64), to: (i64, i64)) {
    let acts = json!({"actions": [{"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
        "actions": [
            {"type": "pointerMove", "duration": 0, "x": from.0, "y": from.1, "origin": "viewport"},
            {"type": "pointerDown", "button": 0},
            {"type": "pointerMove", "duration": 150, "x": to.0, "y": to.1, "origin": "viewport"},
            {"type": "pointerUp", "button": 0}]}]});
    d.call("POST", &format!("/session/{sid}/actions"), Some(acts));
    d.call("DELETE", &format!("/session/{sid}/actions"), None);
}

fn click_button(d: &Driver, sid: &str, css: &str) {
    let el = d.call(
        "POST",
        &format!("/session/{sid}/element"),
        Some(json!({"using": "css selector", "value": css})),
    );
    let id = el
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    d.call(
        "POST",
        &format!("/session/{sid}/element/{id}/click"),
        Some(json!({})),
    );
}

/// Send a prompt through the UI and return the new mask's hash once it arrived.
fn prompt(d: &Driver, sid: &str, from: (i64, i64), to: (i64, i64)) -> u64 {
    let v0 = js(d, sid, "return window.evosam.maskVersion")
        .as_u64()
        .unwrap();
    pointer(d, sid, from, to);
    wait_for(
        d,
        sid,
        &format!("window.evosam.maskVersion > {v0} && window.evosam.pending === 0"),
        "the mask",
        120,
    );
    js(d, sid, "return window.evosam.maskHash")
        .as_u64()
        .unwrap()
}

#[test]
#[ignore = "needs chromium + chromedriver (scripts/browser-deps.sh), the LiteMedSAM weights and ../shared/data"]
fn annotate_page_in_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let (images, masks) = study_images(tmp.path());
    let experts = expert_folder(tmp.path(), &images);
    let study = tmp.path().join("study");
    let mut server = Kill(
        Command::new(env!("CARGO_BIN_EXE_evosam"))
            .args(["annotate", "--images"])
            .arg(&images)
            .arg("--masks")
            .arg(&masks)
            .arg("--experts")
            .arg(&experts)
            .arg("--out")
            .arg(&study)
            .args([
                "--annotator",
                "browser",
                "--port",
                "0",
                "--design",
                "crossover",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("evosam annotate"),
    );
    let mut url = String::new();
    for line in BufReader::new(server.0.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(u) = line.strip_prefix("open ") {
            url = u.to_string();
            break;
        }
    }
    assert!(
        url.starts_with("http://127.0.0.1:") && url.contains("?token="),
        "{url}"
    );

    let port = free_port();
    let _driver = Kill(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver on PATH"),
    );
    let d = Driver {
        http: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{port}"),
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
    };
    let t0 = Instant::now();
    while d
        .rt
        .block_on(d.http.get(format!("{}/status", d.base)).send())
        .is_err()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
        "binary": which("chromium"),
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,800"]}}}});
    let s = d.call("POST", "/session", Some(caps));
    let sid = s["sessionId"].as_str().unwrap().to_string();

    d.call(
        "POST",
        &format!("/session/{sid}/url"),
        Some(json!({"url": url})),
    );
    wait_for(
        &d,
        &sid,
        "window.evosam && window.evosam.maskVersion > 0 && window.evosam.pending === 0",
        "the first case",
        300,
    );
    let st = js(&d, &sid, "return {slot: window.evosam.slot, total: window.evosam.total, w: window.evosam.w, h: window.evosam.h}");
    assert_eq!(st["slot"], 0);
    assert_eq!(st["total"], 2 * N_IMAGES);
    let body = js(&d, &sid, "return document.body.innerText");
    for word in ["evosam", "base", "expert", "kvasir"] {
        assert!(
            !body.as_str().unwrap().to_lowercase().contains(word),
            "the page names `{word}`: {body}"
        );
    }
    let (w, h) = (st["w"].as_f64().unwrap(), st["h"].as_f64().unwrap());
    // the open case's ground truth gives the box and the clicks
    let log = study.join("log/browser.jsonl");
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let case = first["case"].as_str().unwrap().to_string();
    let gt = image::open(masks.join(format!("{case}.jpg")))
        .unwrap()
        .to_luma8();
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in gt.enumerate_pixels() {
        if p.0[0] > 127 {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
    }
    let (x0, y0, x1, y1) = (x0 as f64, y0 as f64, x1 as f64, y1 as f64);
    let h0 = js(&d, &sid, "return window.evosam.maskHash")
        .as_u64()
        .unwrap();
    let h1 = prompt(&d, &sid, client(&d, &sid, x0, y0), client(&d, &sid, x1, y1));
    assert_ne!(h1, h0, "the box gave no mask");
    // a foreground click at the box centre, a background click near its corner (inside the box)
    click_button(&d, &sid, "#t-pos");
    let c = client(&d, &sid, (x0 + x1) / 2.0, (y0 + y1) / 2.0);
    let h2 = prompt(&d, &sid, c, c);
    assert_ne!(h2, h1, "the mask did not change after the foreground click");
    click_button(&d, &sid, "#t-neg");
    let c = client(&d, &sid, x0 + 0.1 * (x1 - x0), y0 + 0.1 * (y1 - y0));
    let h3 = prompt(&d, &sid, c, c);
    assert_ne!(h3, h2, "the mask did not change after the background click");
    let shot = d.call("GET", &format!("/session/{sid}/screenshot"), None);
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot.as_str().unwrap())
        .unwrap();
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/annotate-browser");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("page.png"), &png).unwrap();
    assert!(image::load_from_memory(&png).unwrap().width() > 500);
    let timing = js(
        &d,
        &sid,
        "return [window.evosam.loadedMs, window.evosam.lastMaskMs]",
    );
    eprintln!(
        "page: first case loaded in {:.0} ms, last mask update {:.0} ms (screenshot {})",
        timing[0].as_f64().unwrap(),
        timing[1].as_f64().unwrap(),
        out.join("page.png").display()
    );
    click_button(&d, &sid, "#accept");
    wait_for(
        &d,
        &sid,
        "window.evosam.slot === 1 && window.evosam.pending === 0",
        "the second case",
        300,
    );
    d.call("DELETE", &format!("/session/{sid}"), None);

    let events: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        &actions[..5],
        ["open", "box", "click", "click", "accept"],
        "{actions:?}"
    );
    assert!(events[..5]
        .iter()
        .all(|e| e["case"] == case.as_str() && e["annotator"] == "browser"));
    let near = |a: &Value, b: f64, tol: f64| (a.as_f64().unwrap() - b).abs() <= tol;
    let tol = 2.0 * w.max(h) / 800.0 + 1.0; // a screen pixel in image pixels, and rounding
    assert!(
        near(&events[1]["x"], x0, tol) && near(&events[1]["y1"], y1, tol),
        "{}",
        events[1]
    );
    assert_eq!(
        (events[2]["label"].as_u64(), events[3]["label"].as_u64()),
        (Some(1), Some(0))
    );
    assert!(near(&events[2]["x"], (x0 + x1) / 2.0, tol), "{}", events[2]);
    assert_eq!(events[4]["n_prompts"], 3);
    for e in &events[1..5] {
        let dice = e["dice"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&dice), "{e}");
    }
    assert!(events[1]["t_case_s"].as_f64().unwrap() <= events[4]["t_case_s"].as_f64().unwrap());
    assert!(["evosam", "base"].contains(&events[0]["model"].as_str().unwrap()));
    let cases = std::fs::read_to_string(study.join("cases.csv")).unwrap();
    assert_eq!(cases.lines().count(), 2, "{cases}");
    assert!(study.join("events.parquet").is_file());
}

fn which(name: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .unwrap();
    let p = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        !p.is_empty(),
        "{name} not on PATH (scripts/browser-deps.sh installs it)"
    );
    p
}
