//! Router tests with `tower::ServiceExt::oneshot`, on the small fixture experts.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use moe_core::config::Limits;
use moe_server::http::{AppState, app};
use serde_json::Value;
use tower::ServiceExt;

async fn call(router: axum::Router, req: Request<Body>) -> (StatusCode, Value, Option<String>) {
    let res = router.oneshot(req).await.unwrap();
    let status = res.status();
    let retry = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), retry)
}

fn post(body: &str) -> Request<Body> {
    Request::post("/classify").header("content-type", "application/json").body(Body::from(body.to_string())).unwrap()
}

fn json_to(method: Method, uri: &str, body: &str) -> Request<Body> {
    let req = Request::builder().method(method).uri(uri).header("content-type", "application/json");
    let req = req.header("authorization", "Bearer t");
    req.body(Body::from(body.to_string())).unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn assert_error(v: &Value, code: &str) {
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classify_single_and_batch_answer_the_same_way() {
    let core = common::loaded_core(&common::fixture_models(), Limits::default()).await;
    let r = app(AppState::new(core));
    let t = std::time::Instant::now();
    let (s, one, _) = call(r.clone(), post(r#"{"text": "how to pack for a trip to paris"}"#)).await;
    let elapsed_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(s, StatusCode::OK, "{one}");
    let (s, many, _) = call(r, post(r#"{"texts": ["how to pack for a trip to paris", "how to treat a cold"]}"#)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(many["results"].as_array().unwrap().len(), 2);
    let a = &one["results"][0];
    let b = &many["results"][0];
    for field in ["label", "abstained", "best_guess", "truncated"] {
        assert_eq!(a[field], b[field], "{field}");
    }
    let experts = a["experts"].as_array().unwrap();
    assert_eq!(experts.len(), 2);
    for (x, y) in experts.iter().zip(b["experts"].as_array().unwrap()) {
        let (px, py) = (x["probability"].as_f64().unwrap(), y["probability"].as_f64().unwrap());
        assert!((px - py).abs() < 1e-5, "batching changed a probability: {px} vs {py}");
        for f in ["class", "threshold", "passed", "gate_weight", "score", "algorithm", "bundle", "version"] {
            assert!(!x[f].is_null(), "missing {f}");
        }
    }
    let took = one["took_ms"].as_f64().unwrap();
    assert!(took > 0.0 && took <= elapsed_ms, "took_ms {took} must lie within the call's {elapsed_ms} ms");
    assert_eq!(one["generation"], 1, "the first installed set answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expert_table_can_be_left_out_without_changing_the_decision() {
    let core = common::loaded_core(&common::fixture_models(), Limits::default()).await;
    let r = app(AppState::new(core));
    let body = r#"{"texts": ["how to pack for a trip to paris", "how to treat a cold", "how to fold a paper boat"]}"#;
    let at = |view: &str| {
        let uri = if view.is_empty() { "/classify".to_string() } else { format!("/classify?experts={view}") };
        json_to(Method::POST, &uri, body)
    };
    let (_, default, _) = call(r.clone(), at("")).await;
    let (_, top, _) = call(r.clone(), at("top")).await;
    let (s0, all, _) = call(r.clone(), at("all")).await;
    let (s1, passed, _) = call(r.clone(), at("passed")).await;
    let (s2, none, _) = call(r.clone(), at("none")).await;
    assert_eq!((s0, s1, s2), (StatusCode::OK, StatusCode::OK, StatusCode::OK), "{passed} {none}");
    let mut passing_rows = 0;
    for i in 0..3 {
        let full = &all["results"][i];
        assert_eq!(default["results"][i], top["results"][i], "top is the default");
        // top: the passed experts and the 5 best scores, best first; the rest are below them.
        let mut by_score = full["experts"].as_array().unwrap().clone();
        by_score.sort_by(|a, b| b["score"].as_f64().unwrap().total_cmp(&a["score"].as_f64().unwrap()));
        let kept = by_score.iter().enumerate().filter(|(k, e)| *k < 5 || e["passed"] == true).count();
        assert_eq!(top["results"][i]["experts"], Value::Array(by_score[..kept].to_vec()), "{top}");
        assert_eq!(top["results"][i]["experts"][0]["class"], full["best_guess"], "the best guess leads");
        for v in [&top, &passed, &none] {
            for f in ["label", "abstained", "best_guess", "truncated"] {
                assert_eq!(v["results"][i][f], full[f], "{f}");
            }
        }
        let want: Vec<&Value> = full["experts"].as_array().unwrap().iter().filter(|e| e["passed"] == true).collect();
        let got: Vec<&Value> = passed["results"][i]["experts"].as_array().unwrap().iter().collect();
        assert_eq!(got, want);
        passing_rows += got.len();
        assert_eq!(none["results"][i]["experts"], Value::Array(vec![]));
    }
    assert!(passing_rows > 0, "the fixture texts should pass some expert: {all}");
    let (s, v, _) = call(r, at("some")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_use_one_error_shape() {
    let limits = Limits { max_body_bytes: 2048, max_texts: 3, max_text_chars: 200, ..Limits::default() };
    let core = common::loaded_core(&common::fixture_models(), limits).await;
    let r = app(AppState::new(core).with_admin_token(Some("t".into())));
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (post("{not json"), StatusCode::BAD_REQUEST, "bad_request"),
        (post(r#"{"text": ""}"#), StatusCode::BAD_REQUEST, "bad_request"),
        (post(r#"{"text": "   "}"#), StatusCode::BAD_REQUEST, "bad_request"),
        (post(r#"{"texts": []}"#), StatusCode::BAD_REQUEST, "bad_request"),
        (post(r#"{"texts": ["a", "b", "c", "d"]}"#), StatusCode::BAD_REQUEST, "bad_request"),
        (post(r#"{"text": "a", "texts": ["b"]}"#), StatusCode::BAD_REQUEST, "bad_request"),
        (post(r#"{"txt": "a"}"#), StatusCode::BAD_REQUEST, "bad_request"),
        (post(r#"{"text": 5}"#), StatusCode::BAD_REQUEST, "bad_request"),
        (post(r#"[null, ["a"]]"#), StatusCode::BAD_REQUEST, "bad_request"),
        (json_to(Method::POST, "/experts/Travel/select", "[]"), StatusCode::BAD_REQUEST, "bad_request"),
        (json_to(Method::PUT, "/experts/Travel", r#"["Travel-logreg"]"#), StatusCode::BAD_REQUEST, "bad_request"),
        (
            json_to(Method::PUT, "/experts/Travel/shadow", r#"["Travel-logreg"]"#),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (post(&format!(r#"{{"text": "{}"}}"#, "a ".repeat(150))), StatusCode::BAD_REQUEST, "bad_request"),
        (post(&format!(r#"{{"text": "{}"}}"#, "a".repeat(5000))), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        (
            json_to(Method::PUT, "/experts/Travel", &format!(r#"{{"bundle": "{}"}}"#, "a".repeat(5000))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            Request::post("/classify").body(Body::from(r#"{"text": "a"}"#)).unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        // The fixture set has no trunk: nothing to group or train a head on (the set, not the request).
        (json_to(Method::POST, "/unknowns/g1/teach", r#"{"class": "Brand new"}"#), StatusCode::CONFLICT, "conflict"),
        (
            json_to(
                Method::POST,
                "/experts/Brand%20new/train",
                r#"{"positives": ["how to a", "how to b", "how to c", "how to d", "how to e"], "negatives": ["x y", "y z", "z w", "w v", "v u"]}"#,
            ),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (get("/experts/NoSuchClass"), StatusCode::NOT_FOUND, "unknown_class"),
        (get("/no/such/route"), StatusCode::NOT_FOUND, "not_found"),
        (get("/classify"), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (get("/jobs/not-a-number"), StatusCode::BAD_REQUEST, "bad_request"),
        (get("/experts/%FF%FE"), StatusCode::BAD_REQUEST, "bad_request"),
        (
            get(&format!("/experts/{}", "a".repeat(moe_server::http::MAX_URI_BYTES))),
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
        ),
        (
            with_headers(moe_server::http::MAX_HEADERS + 1, 10),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
        ),
        (
            with_headers(4, moe_server::http::MAX_HEADER_BYTES / 4),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
        ),
    ];
    for (req, status, code) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (s, v, _) = call(r.clone(), req).await;
        assert_eq!(s, status, "{what}: {v}");
        assert_error(&v, code);
    }
}

/// GET /healthz with `n` extra header fields of `bytes` bytes each.
fn with_headers(n: usize, bytes: usize) -> Request<Body> {
    let mut req = Request::get("/healthz");
    for i in 0..n {
        req = req.header(format!("x-extra-{i}"), "v".repeat(bytes));
    }
    req.body(Body::empty()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_loaded() {
    let core = common::core(&common::fixture_models(), Limits::default());
    let r = app(AppState::new(core.clone()));
    let (s, v, _) = call(r.clone(), get("/healthz")).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (s, v, retry) = call(r.clone(), get("/readyz")).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_error(&v, "not_ready");
    assert_eq!(retry.as_deref(), Some("1"));
    let (s, v, _) = call(r.clone(), post(r#"{"text": "a"}"#)).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_error(&v, "not_ready");
    let c = core.clone();
    tokio::task::spawn_blocking(move || c.load_registry()).await.unwrap().unwrap();
    let (s, v, _) = call(r, get("/readyz")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["experts"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experts_are_listed_with_their_cards() {
    let core = common::loaded_core(&common::fixture_models(), Limits::default()).await;
    let r = app(AppState::new(core));
    let (s, v, _) = call(r.clone(), get("/experts")).await;
    assert_eq!(s, StatusCode::OK);
    let list = v["experts"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    for e in list {
        for f in ["class", "bundle", "version", "algorithm", "threshold", "metrics", "provider", "loaded_at"] {
            assert!(!e[f].is_null(), "missing {f} in {e}");
        }
        assert_eq!(e["provider"], "CPU");
        assert!(e["metrics"]["val"]["report"]["eer"].is_number());
        assert!(e["spelling"].is_null(), "the fixtures name no lexicon");
    }
    assert!(v["gate"]["active"].is_string());
    let (s, one, _) = call(r, get("/experts/Travel")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(one["class"], "Travel");
    assert_eq!(one["bundle"], "travel--tokenbag");
}

/// openapi.yaml lists every history action the service records.
#[test]
fn openapi_lists_every_history_action() {
    let text = std::fs::read_to_string(common::repo().join("openapi.yaml")).unwrap();
    let line = text.lines().find(|l| l.trim_start().starts_with("action: {type: string, enum: [")).unwrap();
    let listed: Vec<&str> = line.split('[').nth(1).unwrap().split(']').next().unwrap().split(", ").collect();
    assert_eq!(listed, moe_core::bundle::registry::ACTIONS);
}

/// openapi.yaml documents exactly the routes the router serves, and each one answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_matches_the_router() {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(common::repo().join("openapi.yaml")).unwrap()).unwrap();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, ops) in doc["paths"].as_mapping().unwrap() {
        for (method, _) in ops.as_mapping().unwrap() {
            documented.push((method.as_str().unwrap().to_string(), path.as_str().unwrap().to_string()));
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> =
        moe_server::http::ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    served.sort();
    assert_eq!(documented, served);
    let core = common::loaded_core(&common::fixture_models(), Limits::default()).await;
    let r = app(AppState::new(core));
    for (method, path) in moe_server::http::ROUTES {
        let uri = path.replace("{class}", "Travel").replace("{id}", "1");
        let req = match *method {
            "post" if uri == "/classify" => post(r#"{"text": "how to travel"}"#),
            "post" if uri == "/feedback" => {
                json_to(Method::POST, &uri, r#"{"text": "how to travel", "label": "Travel"}"#)
            }
            "get" => get(&uri),
            m => Request::builder().method(m.to_uppercase().as_str()).uri(&uri).body(Body::empty()).unwrap(),
        };
        let (status, v, _) = call(r.clone(), req).await;
        // Admin routes exist and answer 403 here (no token configured); read routes succeed.
        let admin = matches!(*method, "put" | "delete")
            || uri.ends_with("/rollback")
            || uri.ends_with("/select")
            || uri.ends_with("/train")
            || uri.ends_with("/promote")
            || uri.starts_with("/unknowns");
        if uri == "/jobs/1" {
            assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
            assert_error(&v, "not_found");
        } else if admin {
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri}: {v}");
            assert_error(&v, "admin_disabled");
        } else {
            assert!(status.is_success(), "{method} {uri}: {status} {v}");
        }
    }
    let res = r.oneshot(get("/openapi.yaml")).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, std::fs::read(common::repo().join("openapi.yaml")).unwrap());
}

/// The console's three files come from the binary with a CSP allowing only this origin, and the
/// page names only its own script and style sheet (no external request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_with_its_security_headers() {
    let core = common::loaded_core(&common::fixture_models(), Limits::default()).await;
    let r = app(AppState::new(core));
    for (uri, ct) in [("/", "text/html"), ("/console.js", "text/javascript"), ("/console.css", "text/css")] {
        let res = r.clone().oneshot(get(uri)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{uri}");
        let h = res.headers();
        assert!(h["content-type"].to_str().unwrap().starts_with(ct), "{uri}");
        assert_eq!(h["content-security-policy"], moe_server::http::console::CSP, "{uri}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        let body = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert!(!body.contains("http://") && !body.contains("https://"), "{uri} names another origin");
        if uri == "/" {
            assert!(body.contains(r#"<script src="/console.js" defer>"#) && body.contains(r#"href="/console.css""#));
            assert!(!body.contains("<script>") && !body.contains(" style="), "no inline script or style (CSP)");
        }
    }
    for forbidden in ["unsafe-inline", "unsafe-eval", "*"] {
        assert!(!moe_server::http::console::CSP.contains(forbidden), "CSP allows {forbidden}");
    }
}

/// `GET /bundles` lists every bundle folder of the model root with its card, marks the active
/// ones, and filters by class.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_lists_the_model_root_and_marks_the_active_bundles() {
    let core = common::loaded_core(&common::fixture_models(), Limits::default()).await;
    let r = app(AppState::new(core));
    let (s, all, _) = call(r.clone(), get("/bundles")).await;
    assert_eq!(s, StatusCode::OK, "{all}");
    let names: Vec<&str> = all["bundles"].as_array().unwrap().iter().map(|b| b["bundle"].as_str().unwrap()).collect();
    assert_eq!(names, ["health--tokenbag", "health--tokenbag-b", "travel--tokenbag", "travel--tokenbag-b"]);
    let (_, travel, _) = call(r.clone(), get("/bundles?class=Travel")).await;
    let travel = travel["bundles"].as_array().unwrap();
    assert_eq!(travel.len(), 2);
    assert!(travel.iter().all(|b| b["class"] == "Travel" && b["error"].is_null() && b["val_eer"].is_f64()));
    let active: Vec<&Value> = travel.iter().filter(|b| b["active"] == true).collect();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["bundle"], "travel--tokenbag");
    let (s, none, _) = call(r, get("/bundles?class=Nope")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(none["bundles"].as_array().unwrap().len(), 0);
    // A folder whose card cannot be read is listed with the reason, not hidden and not a 500.
    let root = common::copy_root(&common::fixture_models(), "bundles-broken");
    std::fs::create_dir_all(root.join("broken")).unwrap();
    std::fs::write(root.join("broken/card.json"), "{").unwrap();
    let r = app(AppState::new(common::loaded_core(&root, Limits::default()).await));
    let (s, all, _) = call(r, get("/bundles")).await;
    assert_eq!(s, StatusCode::OK, "{all}");
    let broken = all["bundles"].as_array().unwrap().iter().find(|b| b["bundle"] == "broken").unwrap().clone();
    assert!(broken["class"].is_null() && broken["active"] == false, "{broken}");
    assert!(broken["error"].as_str().unwrap().contains("card.json"), "{broken}");
}

/// Every name pattern in openapi.yaml (classes, bundles, trunks, feedback labels) is the same, and
/// its character class is exactly the service's `invisible` set, read back from the pattern's
/// ranges and compared for every character of the Basic Multilingual Plane.
#[test]
fn openapi_name_patterns_refuse_what_the_service_refuses() {
    let text = std::fs::read_to_string(common::repo().join("openapi.yaml")).unwrap();
    let patterns: Vec<&str> =
        text.match_indices("'^[^.").map(|(i, _)| text[i + 1..].split('\'').next().unwrap()).collect();
    assert!(patterns.len() >= 7, "{} name patterns", patterns.len());
    assert!(patterns.iter().all(|p| *p == patterns[0]), "name patterns differ: {patterns:#?}");
    // The middle class `[^...]*` lists the invisible characters alone.
    let class = patterns[0].split("([^").nth(1).unwrap().split("]*").next().unwrap();
    let code = |s: &str| u32::from_str_radix(&s[2..], 16).unwrap();
    let mut ranges = Vec::new();
    let mut rest = class;
    while !rest.is_empty() {
        let len = if rest.starts_with("\\x") { 4 } else { 6 };
        let lo = code(&rest[..len]);
        rest = &rest[len..];
        let hi = match rest.strip_prefix('-') {
            Some(r) => {
                let len = if r.starts_with("\\x") { 4 } else { 6 };
                let hi = code(&r[..len]);
                rest = &r[len..];
                hi
            }
            None => lo,
        };
        ranges.push((lo, hi));
    }
    for c in (0..0x1_0000).filter_map(char::from_u32) {
        let listed = ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&(c as u32)));
        assert_eq!(listed, moe_core::bundle::card::invisible(c), "U+{:04X}", c as u32);
    }
}
